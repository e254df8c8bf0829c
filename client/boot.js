// Loads the app (wasm-bindgen's glue, then the wasm).
import init from '/traum_client.js';
init({ module_or_path: '/traum_client_bg.wasm' });
