use qie_ir::passes::fusion::{fuse, validate_fusion_plan, FusionOptions};
use qie_ir::passes::memplan::{plan_memory, validate_memory_plan, MemoryOptions};
use qie_ir::testing::{random_graph, RandomGraphOptions};
use std::time::Instant;
#[test]
fn perf() {
    for n in [2000usize, 8000, 30000] {
        let t = Instant::now();
        let (g, _) = random_graph(3, &RandomGraphOptions { num_ops: n, ..Default::default() });
        let tg = t.elapsed();
        let t = Instant::now();
        let p = fuse(&g, &FusionOptions::default());
        let tf = t.elapsed();
        let t = Instant::now();
        let m = plan_memory(&g, &p, &MemoryOptions::default());
        let tm = t.elapsed();
        let t = Instant::now();
        validate_fusion_plan(&g, &p).unwrap();
        validate_memory_plan(&g, &p, &m).unwrap();
        let tv = t.elapsed();
        println!("nodes {} groups {} gen {:?} fuse {:?} memplan {:?} validate {:?} arena {} peak {}", g.len(), p.groups.len(), tg, tf, tm, tv, m.arena_bytes, m.peak_live_bytes);
    }
}
