//! Layer writer throughput (MB/s of uncompressed tar): a tree of host
//! files written as a zstd layer into a store, both digests included.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata::build::layer::write_layer;
use strata::build::tree::{Content, Meta, NodeKind, Tree};
use strata::spec::{Compression, ImagePath};
use strata::store::Store;

/// 64 MiB of mildly compressible data in 256 files of 256 KiB.
fn tree(dir: &std::path::Path) -> (Tree, u64) {
    let mut t = Tree::new();
    let mut total = 0;
    let mut state = 0x2545F4914F6CDD1Du64;
    for i in 0..256 {
        let mut body = Vec::with_capacity(256 << 10);
        while body.len() < 256 << 10 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Text-like: a small alphabet compresses about 2:1, like a JDK.
            body.push(b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(state % 38) as usize]);
        }
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, &body).unwrap();
        total += body.len() as u64;
        t.insert(
            ImagePath::parse(&format!("data/f{i}")).unwrap(),
            NodeKind::File {
                content: Content::Host(p),
                size: body.len() as u64,
            },
            Meta::FILE,
        )
        .unwrap();
    }
    let inline: Arc<[u8]> = Arc::from(&b"small"[..]);
    t.insert(
        ImagePath::parse("etc/small").unwrap(),
        NodeKind::File {
            size: 5,
            content: Content::Inline(inline),
        },
        Meta::FILE,
    )
    .unwrap();
    (t, total)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (t, total) = tree(dir.path());
    let mut g = c.benchmark_group("layer_writer");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    for (name, compression) in [
        ("zstd-3", Compression::Zstd { level: 3 }),
        ("gzip-6", Compression::Gzip { level: 6 }),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                // A fresh store each time: the blob is really written.
                let s = tempfile::tempdir().unwrap();
                let store = Store::open(s.path()).unwrap();
                write_layer(&store, &t, &|_| None, compression, 0).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
