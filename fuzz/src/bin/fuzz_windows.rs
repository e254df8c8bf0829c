//! AFL target `windows`: see [`traum_fuzz::windows`].
// `fuzz!`: any panic aborts at its source, so the crash has the full backtrace.
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        traum_fuzz::windows(data);
    });
}
