use qie_ir::passes::fusion::{fuse, FusionOptions};
use qie_ir::passes::memplan::{plan_memory, MemoryOptions};
use qie_ir::passes::schedule_dump::{dump_fusion, dump_memplan};
use qie_ir::testing::{random_graph, RandomGraphOptions};
#[test]
fn show() {
    for seed in [1u64, 7] {
        let (g, _) = random_graph(seed, &RandomGraphOptions { num_ops: 30, ..Default::default() });
        println!("{}", qie_ir::print::print_graph(&g));
        let p = fuse(&g, &FusionOptions::default());
        println!("{}", dump_fusion(&g, &p));
        let m = plan_memory(&g, &p, &MemoryOptions::default());
        println!("{}", dump_memplan(&g, &p, &m));
        println!("{:?}", qie_ir::passes::memplan::validate_memory_plan(&g, &p, &m));
    }
}
