//! AFL target `graphql`: see [`traum_fuzz::server::graphql`].
// `fuzz!`: any panic aborts at its source, so the crash has the full backtrace.
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

fn main() {
    traum_fuzz::server::warm_up_graphql();
    afl::fuzz!(|data: &[u8]| {
        traum_fuzz::server::graphql(data);
    });
}
