//! The entry points of the two benchmark builds of the pipeline
//! (`bench_new_flow.rs`, `bench_no_flow_state.rs`), which differ only in
//! their `FLOW_STATE` and program name.

/// Defines the XDP program `$name` (the pipeline's verdict on the frame,
/// then the frame's next source: `next_source::bump_frame`), `lb_clock`
/// and the object's other items (`object_items!`). The crate root declares the
/// `next_source` and `pipeline` modules and `FLOW_STATE`.
macro_rules! new_flow_programs {
    ($name:ident) => {
        #[aya_ebpf::macros::xdp]
        // The pipeline in the program's own function (see `main.rs`).
        #[inline(always)]
        pub fn $name(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            let action = match pipeline::run(&ctx) {
                Ok(action) | Err(action) => action,
            };
            next_source::bump_frame(&ctx);
            action
        }

        /// The data plane's clock, read by the loader (`pipeline::clock`).
        #[aya_ebpf::macros::xdp]
        pub fn lb_clock(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            pipeline::clock(&ctx)
        }

        object_items!();
    };
}
