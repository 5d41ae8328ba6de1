//! The tier graph of the registry's images: an image's parent is the
//! image whose layers are the longest strict prefix of its own (alpine →
//! tools → jdk → tomcat → apps), so the graph shows which layers each
//! tier adds and which layers are shared. Pure: the caller lists images.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::digest::Digest;

/// Layers, bottom first: digest and compressed size.
pub type Layers = Vec<(Digest, u64)>;

/// One image (all the tags naming one manifest).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TierNode {
    /// `REPO:TAG` names, sorted.
    pub names: Vec<String>,
    pub manifest: Digest,
    pub layers: Layers,
    /// Index of the parent in the graph's node list.
    pub parent: Option<usize>,
    /// Layers below this index come from the parent.
    pub inherited: usize,
    /// For each layer, how many images of the graph hold it.
    pub shared_by: Vec<usize>,
}

impl TierNode {
    /// Bytes this tier adds over its parent.
    pub fn own_bytes(&self) -> u64 {
        self.layers[self.inherited..].iter().map(|l| l.1).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum()
    }
}

/// Builds the graph from `(name, manifest, layers)`; nodes come out with
/// parents before children, siblings by name.
pub fn graph(images: Vec<(String, Digest, Layers)>) -> Vec<TierNode> {
    // One node per manifest.
    let mut by_manifest: BTreeMap<Digest, (Vec<String>, Layers)> = BTreeMap::new();
    for (name, manifest, layers) in images {
        by_manifest
            .entry(manifest)
            .or_insert_with(|| (vec![], layers))
            .0
            .push(name);
    }
    let mut nodes: Vec<TierNode> = by_manifest
        .into_iter()
        .map(|(manifest, (mut names, layers))| {
            names.sort();
            TierNode {
                names,
                manifest,
                shared_by: vec![0; layers.len()],
                layers,
                parent: None,
                inherited: 0,
            }
        })
        .collect();
    // Parents first: fewer layers first, then by name.
    nodes.sort_by(|a, b| (a.layers.len(), &a.names).cmp(&(b.layers.len(), &b.names)));
    for i in 0..nodes.len() {
        let mut best: Option<usize> = None;
        for j in 0..i {
            let (p, c) = (&nodes[j].layers, &nodes[i].layers);
            let prefix = p.len() < c.len() && c[..p.len()] == p[..];
            if prefix && best.is_none_or(|b| nodes[b].layers.len() < p.len()) {
                best = Some(j);
            }
        }
        nodes[i].parent = best;
        nodes[i].inherited = best.map_or(0, |b| nodes[b].layers.len());
    }
    let mut holders: HashMap<Digest, usize> = HashMap::new();
    for n in &nodes {
        for l in &n.layers {
            *holders.entry(l.0.clone()).or_default() += 1;
        }
    }
    for n in &mut nodes {
        n.shared_by = n.layers.iter().map(|l| holders[&l.0]).collect();
    }
    nodes
}

/// The graph of every tagged image manifest in `reg` (indexes and
/// unreadable manifests are left out).
pub fn of_registry(reg: &crate::registry::Registry) -> Vec<TierNode> {
    let mut images = Vec::new();
    for repo in reg.repositories() {
        for tag in reg.tags(&repo, None, None).unwrap_or_default() {
            let Ok((digest, bytes, _)) = reg.manifest(&repo, &tag) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<crate::oci::Manifest>(&bytes) else {
                continue;
            };
            let layers = m.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
            images.push((format!("{repo}:{tag}"), digest, layers));
        }
    }
    graph(images)
}

/// The order to draw the graph in: (node index, depth), depth first.
pub fn walk(nodes: &[TierNode]) -> Vec<(usize, usize)> {
    fn visit(nodes: &[TierNode], parent: Option<usize>, depth: usize, out: &mut Vec<(usize, usize)>) {
        let mut kids: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].parent == parent).collect();
        kids.sort_by(|a, b| nodes[*a].names.cmp(&nodes[*b].names));
        for k in kids {
            out.push((k, depth));
            if depth < 64 {
                visit(nodes, Some(k), depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    visit(nodes, None, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    #[test]
    fn parents_are_the_longest_prefix_and_shared_layers_counted() {
        let l = |names: &[&str]| names.iter().map(|n| (d(n), 10)).collect::<Vec<_>>();
        let images = vec![
            (
                "app:2".to_string(),
                d("m-app2"),
                l(&["base", "jdk", "tomcat", "war2"]),
            ),
            ("alpine:1".to_string(), d("m-base"), l(&["base"])),
            (
                "tomcat:1".to_string(),
                d("m-tomcat"),
                l(&["base", "jdk", "tomcat"]),
            ),
            ("jdk:1".to_string(), d("m-jdk"), l(&["base", "jdk"])),
            (
                "app:1".to_string(),
                d("m-app1"),
                l(&["base", "jdk", "tomcat", "war1"]),
            ),
            (
                "app:latest".to_string(),
                d("m-app1"),
                l(&["base", "jdk", "tomcat", "war1"]),
            ),
            ("other:1".to_string(), d("m-other"), l(&["busybox"])),
        ];
        let g = graph(images);
        let find = |n: &str| g.iter().position(|x| x.names.iter().any(|m| m == n)).unwrap();
        assert_eq!(g.len(), 6, "two tags of one manifest are one node");
        assert_eq!(g[find("app:1")].names, ["app:1", "app:latest"]);
        assert_eq!(g[find("app:1")].parent, Some(find("tomcat:1")));
        assert_eq!(g[find("app:2")].parent, Some(find("tomcat:1")));
        assert_eq!(g[find("tomcat:1")].parent, Some(find("jdk:1")));
        assert_eq!(g[find("jdk:1")].parent, Some(find("alpine:1")));
        assert_eq!(g[find("alpine:1")].parent, None);
        assert_eq!(g[find("other:1")].parent, None);
        assert_eq!(g[find("app:2")].inherited, 3);
        assert_eq!(g[find("app:2")].own_bytes(), 10);
        assert_eq!(g[find("app:2")].shared_by, [5, 4, 3, 1]);
        let order: Vec<_> = walk(&g)
            .into_iter()
            .map(|(i, depth)| (g[i].names[0].as_str(), depth))
            .collect();
        assert_eq!(
            order,
            [
                ("alpine:1", 0),
                ("jdk:1", 1),
                ("tomcat:1", 2),
                ("app:1", 3),
                ("app:2", 3),
                ("other:1", 0)
            ]
        );
    }
}
