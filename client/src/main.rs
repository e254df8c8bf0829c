//! Starts the client: in the browser (wasm32, built by `client/build.sh`),
//! or in a dioxus desktop window with `--features desktop`, talking to the
//! server at `TRAUM_SERVER_URL` (default `http://127.0.0.1:8000`).

#[cfg(any(target_arch = "wasm32", feature = "desktop"))]
fn main() {
    dioxus::launch(traum_client::App);
}

#[cfg(not(any(target_arch = "wasm32", feature = "desktop")))]
fn main() {
    eprintln!(
        "traum-client is the web app: build it with client/build.sh and open `traum serve`'s \
         address, or run it in a window with `cargo run -p traum-client --features desktop`."
    );
    std::process::exit(2);
}
