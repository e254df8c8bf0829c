//! AFL target `decode`: see [`traum_fuzz::decode`].
// `fuzz_nohook!`: the decoder deliberately catches panics inside symphonia (`guarded`) and
// turns them into errors; the default `fuzz!` hook would abort on those caught panics too.
// Panics that escape the target still abort (AFL sees a crash).
#[global_allocator]
static ALLOC: traum_fuzz::CappedAlloc = traum_fuzz::CappedAlloc;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        traum_fuzz::decode(data);
    });
}
