//! AFL target `multipart`: see [`traum_fuzz::server::multipart`].
// `fuzz!`: any panic aborts at its source, so the crash has the full backtrace.
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

fn main() {
    traum_fuzz::server::warm_up_multipart();
    afl::fuzz!(|data: &[u8]| {
        traum_fuzz::server::multipart(data);
    });
}
