//! AFL target `mel`: see [`traum_fuzz::mel`].
// `fuzz!`: any panic aborts at its source, so the crash has the full backtrace.
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

fn main() {
    traum_fuzz::warm_up_mel();
    afl::fuzz!(|data: &[u8]| {
        traum_fuzz::mel(data);
    });
}
