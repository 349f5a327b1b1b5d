//! One private NET-R18 x^2 inference (batch 1, random weights, three roles in one process over
//! loopback TCP), online and offline phases measured separately with `iter_custom`: each
//! criterion sample is one session of `iters` inferences, and the reported time is the sum of
//! that phase's times.
//!
//! `cargo bench -p polypi-core --bench inference`
use criterion::{criterion_group, criterion_main, Criterion};
use polypi_core::engine::bench::bench_local;
use polypi_core::engine::session::Transport;
use polypi_core::model::compile::compile;
use polypi_core::model::zoo::{build, Act, Pool, RefNet};
use polypi_core::net::LinkModel;
use std::time::Duration;

fn phases(c: &mut Criterion) {
    for (name, net) in
        [("NET-M", RefNet::NetM), ("NET-C", RefNet::NetC), ("NET-R18", RefNet::NetR18)]
    {
        let plan = compile(&build(net, Act::Square, Pool::Avg, 1.0, 1).unwrap()).unwrap();
        let mut g = c.benchmark_group(format!("{name} x2 batch1"));
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        for phase in ["online", "offline"] {
            g.bench_function(phase, |b| {
                b.iter_custom(|iters| {
                    let s = bench_local(
                        &plan,
                        1,
                        iters as usize,
                        Transport::Tcp,
                        LinkModel::none(),
                        iters,
                    )
                    .unwrap();
                    let per =
                        if phase == "online" { s.online_ms.median } else { s.offline_ms.median };
                    Duration::from_secs_f64(per * iters as f64 / 1e3)
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, phases);
criterion_main!(benches);
