//! Tests of app spec parsing: good specs resolve, every mistake names
//! `file:line:col` and the key.

use super::*;

const GOOD: &str = r#"
name = "shop"
instances = 2
[network]
name = "strata-shop"
subnet = "10.91.0.0/24"
dynamic_range = "10.91.0.128/25"
pool = "10.91.0.10-10.91.0.99"
[health]
kind = "http"
port = 8080
path = "/index.html"
interval = "200ms"
[hotfix]
paths = ["/var/lib/tomcat10/webapps/**"]
reload = "tomcat-context"
context = "/var/lib/tomcat10/webapps/ROOT"
"#;

fn err(text: &str) -> String {
    parse(Path::new("apps/shop.toml"), text).unwrap_err().to_string()
}

#[test]
fn a_good_spec_resolves() {
    let a = parse(Path::new("apps/shop.toml"), GOOD).unwrap();
    assert_eq!(a.instances, 2);
    assert_eq!(a.instance_name(2), "shop-2");
    assert_eq!(a.health.interval, Duration::from_millis(200));
    assert!(a.hotfix.eligible("var/lib/tomcat10/webapps/ROOT/index.html"));
    assert!(!a.hotfix.eligible("etc/passwd"));
    assert_eq!(
        a.hotfix.reload,
        Reload::TomcatContext("/var/lib/tomcat10/webapps/ROOT".into())
    );
    assert_eq!(a.hosts, vec![Endpoint::Unix("/var/run/docker.sock".into())]);
    assert_eq!(a.max_unavailable, 1, "one at a time unless asked");
}

#[test]
fn max_unavailable_is_between_1_and_100() {
    let with = |n: &str| GOOD.replace("instances = 2", &format!("instances = 2\nmax_unavailable = {n}"));
    let a = parse(Path::new("apps/shop.toml"), &with("3")).unwrap();
    assert_eq!(a.max_unavailable, 3);
    for bad in ["0", "101"] {
        let e = err(&with(bad));
        assert!(
            e.starts_with("apps/shop.toml:4:19: `max_unavailable`") && e.contains("between 1 and 100"),
            "{e}"
        );
    }
    let e = err(&with("\"two\""));
    assert!(
        e.starts_with("apps/shop.toml:4:19:") && e.contains("expected u32"),
        "{e}"
    );
}

#[test]
fn mistakes_name_file_line_and_key() {
    let e = err(&GOOD.replace("kind = \"http\"", "kind = \"htp\""));
    assert!(e.starts_with("apps/shop.toml:10:8: `health.kind`"), "{e}");
    let e = err(&GOOD.replace(
        "pool = \"10.91.0.10-10.91.0.99\"",
        "pool = \"10.92.0.10-10.92.0.99\"",
    ));
    assert!(
        e.contains("apps/shop.toml:8:8") && e.contains("not inside the subnet"),
        "{e}"
    );
    let e = err(&GOOD.replace("10.91.0.128/25", "10.91.0.0/25"));
    assert!(e.contains("overlaps the pool"), "{e}");
    let e = err(&GOOD.replace("instances = 2", "instancez = 2"));
    assert!(e.contains("apps/shop.toml:3:1") && e.contains("instancez"), "{e}");
    let e = err(&GOOD.replace("interval = \"200ms\"", "interval = \"soon\""));
    assert!(e.contains("`health.interval`"), "{e}");
    let e = err(&GOOD.replace("/var/lib/tomcat10/webapps/**", "webapps/**"));
    assert!(e.contains("`hotfix.paths`"), "{e}");
    let e = err(&format!("{GOOD}\n").replace("name = \"shop\"", "name = \"shop\"\nhosts = [\"ssh://x\"]"));
    assert!(e.contains("`hosts`"), "{e}");
}

#[test]
fn networks_and_endpoints() {
    let n = Ipv4Net::parse("10.91.0.0/24").unwrap();
    assert!(n.contains("10.91.0.255".parse().unwrap()) && !n.contains("10.91.1.0".parse().unwrap()));
    assert_eq!(n.last(), "10.91.0.255".parse::<Ipv4Addr>().unwrap());
    assert!(Ipv4Net::parse("10.91.0.1/24").is_none(), "host bits set");
    assert!(Ipv4Net::parse("10.91.0.0/33").is_none());
    assert_eq!(
        Endpoint::parse("tcp://h:2376?tls=/etc/d").unwrap(),
        Endpoint::Tcp {
            addr: "h:2376".into(),
            tls: Some("/etc/d".into())
        }
    );
    assert!(Endpoint::parse("tcp://h").is_err());
    assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("10"), None);
}

#[test]
fn instances_start_round_robin_and_only_a_drained_hosts_move() {
    let spec = |hosts: &[&str], n: u32| {
        let list: Vec<String> = hosts.iter().map(|h| format!("\"tcp://{h}:2376\"")).collect();
        let text = GOOD
            .replace("instances = 2", &format!("instances = {n}"))
            .replace(
                "name = \"shop\"",
                &format!("name = \"shop\"\nhosts = [{}]", list.join(", ")),
            );
        parse(Path::new("apps/shop.toml"), &text).unwrap()
    };
    let place = |a: &App, now: &BTreeMap<u32, String>| -> BTreeMap<u32, String> {
        (1..=a.instances)
            .map(|i| (i, a.host_of(i, now, &|_| false).to_string()))
            .collect()
    };
    let four = spec(&["a", "b", "c", "d"], 8);
    let first = place(&four, &BTreeMap::new());
    let hosts: Vec<&str> = first.values().map(|h| &h[6..7]).collect();
    assert_eq!(hosts, ["a", "b", "c", "d", "a", "b", "c", "d"]);
    assert_eq!(place(&four, &first), first, "nothing moves by itself");
    // d drained: only its instances (4 and 8) move, to the least loaded.
    let three = spec(&["a", "b", "c"], 8);
    let drained = place(&three, &first);
    let moved: Vec<(u32, &str)> = drained
        .iter()
        .filter(|(i, h)| first[*i] != **h)
        .map(|(i, h)| (*i, &h[6..7]))
        .collect();
    assert_eq!(moved, [(4, "a"), (8, "b")]);
    assert_eq!(place(&three, &drained), drained);
    // A host added takes new instances only.
    let five = spec(&["a", "b", "c", "d", "e"], 10);
    let grown = place(&five, &first);
    let e: Vec<u32> = grown
        .iter()
        .filter(|(_, h)| h.contains("//e"))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(e, [9, 10]);
    // `strata drain` of d: the same moves as taking it out of `hosts`,
    // and nothing new goes there; with every host drained, placement
    // stays (the run refuses: see run.rs).
    let drained_d: BTreeMap<u32, String> = (1..=four.instances)
        .map(|i| (i, four.host_of(i, &first, &|h| h.contains("//d")).to_string()))
        .collect();
    assert_eq!(drained_d, drained);
    let all: BTreeMap<u32, String> = (1..=four.instances)
        .map(|i| (i, four.host_of(i, &first, &|_| true).to_string()))
        .collect();
    assert_eq!(all, first);
}

#[test]
fn macvlan_hosts_get_disjoint_slices_of_the_dynamic_range() {
    let lab = GOOD
        .replace(
            "name = \"shop\"",
            "name = \"shop\"\nhosts = [\"tcp://a:2376\", \"tcp://b:2376\", \"tcp://c:2376\"]",
        )
        .replace("[network]", "[network]\ndriver = \"macvlan\"\nparent = \"eth0\"");
    let a = parse(Path::new("apps/shop.toml"), &lab).unwrap();
    let slices: Vec<String> = a
        .hosts
        .iter()
        .map(|h| a.dynamic_range_of(h).unwrap().to_string())
        .collect();
    assert_eq!(slices, ["10.91.0.128/27", "10.91.0.160/27", "10.91.0.192/27"]);
    let bridge = parse(Path::new("apps/shop.toml"), GOOD).unwrap();
    assert_eq!(
        bridge.dynamic_range_of(&bridge.hosts[0]).unwrap().to_string(),
        "10.91.0.128/25"
    );
    let e = err(&lab.replace("10.91.0.128/25", "10.91.0.128/29"));
    assert!(
        e.contains("`network.dynamic_range`") && e.contains("3 hosts"),
        "{e}"
    );
}
