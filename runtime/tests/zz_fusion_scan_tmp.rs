mod cpu_suite;
use qie_ir::testing::{RandomCase, RandomGraphOptions};
use qie_runtime::cpu::CpuBackend;
#[test]
fn scan() {
    let lo: u64 = std::env::var("LO").unwrap().parse().unwrap();
    let hi: u64 = std::env::var("HI").unwrap().parse().unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    let opts = RandomGraphOptions { num_ops: 48, max_rank: 4, max_dim: 6, ..RandomGraphOptions::default() };
    for seed in lo..hi {
        let case = RandomCase::new(seed, &opts);
        let r = std::panic::catch_unwind(|| cpu_suite::check_values(&CpuBackend, &case.graph, &case.inputs, 1e-5));
        if let Err(e) = r {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            let first = msg.lines().next().unwrap_or("").to_string();
            let fuse = msg.lines().find(|l| l.starts_with("(run")).unwrap_or("").to_string();
            println!("seed {seed}: {} {fuse}", &first[..first.len().min(200)]);
        }
    }
}
