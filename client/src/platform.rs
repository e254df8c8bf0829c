//! What differs between the browser and dioxus desktop: where the server
//! is, HTTP, the WebSocket, timers and picked files.

use dioxus::html::FileData;

/// A file the user picked or dropped, not yet read: the browser streams it
/// from disk when the request is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct PickedFile(pub FileData);

impl PickedFile {
    pub fn name(&self) -> String {
        self.0.name()
    }

    pub fn size(&self) -> u64 {
        self.0.size()
    }
}

/// Told bytes sent and bytes in all while an upload is under way.
pub type Progress = Box<dyn Fn(u64, u64)>;

/// Where the browser keeps the API key (GraphiQL's page reads the same entry).
pub const API_KEY_STORAGE: &str = "traum.apiKey";

/// `http://host:port` → `ws://host:port/graphql` (https → wss).
pub fn websocket_url(base: &str) -> String {
    let rest = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_string());
    format!("{}/graphql", rest.trim_end_matches('/'))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use futures_util::{SinkExt, StreamExt};
    use gloo_net::http::Request;
    use gloo_net::websocket::{futures::WebSocket, Message};

    use super::{PickedFile, Progress};
    use crate::api::ApiError;

    /// Switches dark/light on the page and remembers the choice. Plain DOM calls, not
    /// `eval`: the page's content security policy forbids evaluated scripts.
    pub fn toggle_theme() {
        let Some(window) = web_sys::window() else {
            return;
        };
        let Some(root) = window.document().and_then(|d| d.document_element()) else {
            return;
        };
        let next = match root.get_attribute("data-theme").as_deref() {
            Some("dark") => "light",
            _ => "dark",
        };
        let _ = root.set_attribute("data-theme", next);
        if let Ok(Some(storage)) = window.local_storage() {
            let _ = storage.set_item("traum-theme", next);
        }
    }

    /// The origin this page was served from.
    pub fn server_base() -> String {
        web_sys::window()
            .and_then(|w| w.location().origin().ok())
            .unwrap_or_default()
    }

    pub async fn sleep_ms(ms: u32) {
        gloo_timers::future::TimeoutFuture::new(ms).await;
    }

    fn offline(e: impl std::fmt::Display) -> ApiError {
        ApiError::new("OFFLINE", format!("cannot reach the server ({e})"))
    }

    /// The API key this browser keeps for the server (localStorage), if any.
    pub fn api_key() -> Option<String> {
        web_sys::window()?
            .local_storage()
            .ok()??
            .get_item(super::API_KEY_STORAGE)
            .ok()?
            .filter(|k| !k.trim().is_empty())
    }

    /// Keeps (or, with `None`, forgets) the API key, then reloads the page so every
    /// request and the live connection start over with it.
    pub fn set_api_key(key: Option<&str>) {
        let Some(window) = web_sys::window() else {
            return;
        };
        if let Ok(Some(storage)) = window.local_storage() {
            let _ = match key {
                Some(k) => storage.set_item(super::API_KEY_STORAGE, k.trim()),
                None => storage.remove_item(super::API_KEY_STORAGE),
            };
        }
        let _ = window.location().reload();
    }

    pub async fn post_json(url: &str, body: String) -> Result<(u16, String), ApiError> {
        let mut request = Request::post(url).header("content-type", "application/json");
        if let Some(key) = api_key() {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        let response = request
            .body(body)
            .map_err(offline)?
            .send()
            .await
            .map_err(offline)?;
        let status = response.status();
        let text = response.text().await.map_err(offline)?;
        Ok((status, text))
    }

    /// Sends the form with XMLHttpRequest: unlike fetch, it reports upload
    /// progress (bytes sent of the whole body).
    pub async fn post_multipart(
        url: &str,
        operations: String,
        map: String,
        files: Vec<PickedFile>,
        on_progress: Option<Progress>,
    ) -> Result<(u16, String), ApiError> {
        use std::cell::RefCell;
        use std::rc::Rc;
        use wasm_bindgen::closure::Closure;
        use wasm_bindgen::JsCast;

        let internal = |e: wasm_bindgen::JsValue| ApiError::new("INTERNAL", format!("{e:?}"));
        let form = web_sys::FormData::new().map_err(internal)?;
        form.append_with_str("operations", &operations)
            .map_err(internal)?;
        form.append_with_str("map", &map).map_err(internal)?;
        for (i, picked) in files.iter().enumerate() {
            let file = picked
                .0
                .inner()
                .downcast_ref::<web_sys::File>()
                .ok_or_else(|| {
                    ApiError::new(
                        "INTERNAL",
                        format!("{} is not a browser file", picked.name()),
                    )
                })?;
            form.append_with_blob_and_filename(&i.to_string(), file, &file.name())
                .map_err(internal)?;
        }
        let xhr = web_sys::XmlHttpRequest::new().map_err(internal)?;
        xhr.open("POST", url).map_err(internal)?;
        if let Some(key) = api_key() {
            xhr.set_request_header("authorization", &format!("Bearer {key}"))
                .map_err(internal)?;
        }
        let (tx, rx) = futures_channel::oneshot::channel::<Result<(), String>>();
        let tx = Rc::new(RefCell::new(Some(tx)));
        let finish = |outcome: Result<(), String>| {
            let tx = tx.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                if let Some(tx) = tx.borrow_mut().take() {
                    let _ = tx.send(outcome.clone());
                }
            })
        };
        let on_load = finish(Ok(()));
        let on_error = finish(Err("the connection failed".into()));
        let on_abort = finish(Err("the upload was cancelled".into()));
        xhr.set_onload(Some(on_load.as_ref().unchecked_ref()));
        xhr.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        xhr.set_onabort(Some(on_abort.as_ref().unchecked_ref()));
        let on_upload_progress = on_progress.map(|report| {
            Closure::<dyn FnMut(web_sys::ProgressEvent)>::new(move |e: web_sys::ProgressEvent| {
                if e.length_computable() {
                    report(e.loaded() as u64, e.total() as u64);
                }
            })
        });
        if let Some(cb) = &on_upload_progress {
            xhr.upload()
                .map_err(internal)?
                .set_onprogress(Some(cb.as_ref().unchecked_ref()));
        }
        xhr.send_with_opt_form_data(Some(&form)).map_err(internal)?;
        // The closures live until the request ends.
        let outcome = rx.await.unwrap_or(Err("the upload was dropped".into()));
        drop((on_load, on_error, on_abort, on_upload_progress));
        outcome.map_err(offline)?;
        let status = xhr.status().map_err(internal)?;
        let text = xhr.response_text().map_err(internal)?.unwrap_or_default();
        Ok((status, text))
    }

    /// A WebSocket carrying text frames.
    pub struct Socket(WebSocket);

    impl Socket {
        pub async fn connect(url: &str, protocol: &str) -> Result<Socket, String> {
            WebSocket::open_with_protocol(url, protocol)
                .map(Socket)
                .map_err(|e| format!("cannot open {url}: {e}"))
        }

        pub async fn send(&mut self, text: String) -> Result<(), String> {
            self.0
                .send(Message::Text(text))
                .await
                .map_err(|e| e.to_string())
        }

        /// The next text frame; `None` when the connection closed.
        pub async fn next(&mut self) -> Option<Result<String, String>> {
            loop {
                return match self.0.next().await? {
                    Ok(Message::Text(t)) => Some(Ok(t)),
                    Ok(Message::Bytes(_)) => continue,
                    Err(e) => Some(Err(e.to_string())),
                };
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use futures_util::{SinkExt, StreamExt, TryStreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    use super::{PickedFile, Progress};
    use crate::api::ApiError;

    /// Switches dark/light (the desktop webview has no content security policy).
    pub fn toggle_theme() {
        dioxus::prelude::document::eval(
            r#"
const root = document.documentElement;
const next = root.dataset.theme === 'dark' ? 'light' : 'dark';
root.dataset.theme = next;
try { localStorage.setItem('traum-theme', next); } catch (_) {}
"#,
        );
    }

    /// `TRAUM_SERVER_URL`, or a server on this machine's default port.
    pub fn server_base() -> String {
        std::env::var("TRAUM_SERVER_URL").unwrap_or_else(|_| "http://127.0.0.1:8000".into())
    }

    pub async fn sleep_ms(ms: u32) {
        tokio::time::sleep(std::time::Duration::from_millis(ms.into())).await;
    }

    fn offline(e: impl std::fmt::Display) -> ApiError {
        ApiError::new("OFFLINE", format!("cannot reach the server ({e})"))
    }

    async fn finish(response: reqwest::Response) -> Result<(u16, String), ApiError> {
        let status = response.status().as_u16();
        let text = response.text().await.map_err(offline)?;
        Ok((status, text))
    }

    static API_KEY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

    /// `TRAUM_API_KEY`, or the key entered in this window.
    pub fn api_key() -> Option<String> {
        API_KEY
            .lock()
            .unwrap()
            .clone()
            .or_else(|| std::env::var("TRAUM_API_KEY").ok())
            .filter(|k| !k.trim().is_empty())
    }

    /// Keeps the key for this window's requests (the next ones use it).
    pub fn set_api_key(key: Option<&str>) {
        *API_KEY.lock().unwrap() = key.map(|k| k.trim().to_string());
    }

    fn authorized(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match api_key() {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    pub async fn post_json(url: &str, body: String) -> Result<(u16, String), ApiError> {
        let response = authorized(reqwest::Client::new().post(url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(offline)?;
        finish(response).await
    }

    pub async fn post_multipart(
        url: &str,
        operations: String,
        map: String,
        files: Vec<PickedFile>,
        on_progress: Option<Progress>,
    ) -> Result<(u16, String), ApiError> {
        // reqwest does not report upload progress: the bar shows sent once done.
        let total: u64 = files.iter().map(|f| f.size()).sum();
        let mut form = reqwest::multipart::Form::new()
            .text("operations", operations)
            .text("map", map);
        for (i, picked) in files.into_iter().enumerate() {
            let size = picked.size();
            let name = picked.name();
            let stream = picked
                .0
                .byte_stream()
                .map_err(|e| std::io::Error::other(e.to_string()));
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                size,
            )
            .file_name(name);
            form = form.part(i.to_string(), part);
        }
        let response = authorized(reqwest::Client::new().post(url))
            .multipart(form)
            .send()
            .await
            .map_err(offline)?;
        if let Some(report) = on_progress {
            report(total, total);
        }
        finish(response).await
    }

    type Stream = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A WebSocket carrying text frames.
    pub struct Socket(Stream);

    impl Socket {
        pub async fn connect(url: &str, protocol: &str) -> Result<Socket, String> {
            let mut request = url.into_client_request().map_err(|e| e.to_string())?;
            request.headers_mut().insert(
                "sec-websocket-protocol",
                protocol
                    .parse()
                    .map_err(|_| "bad protocol name".to_string())?,
            );
            let (stream, _) = tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| format!("cannot open {url}: {e}"))?;
            Ok(Socket(stream))
        }

        pub async fn send(&mut self, text: String) -> Result<(), String> {
            self.0
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string())
        }

        /// The next text frame; `None` when the connection closed.
        pub async fn next(&mut self) -> Option<Result<String, String>> {
            loop {
                return match self.0.next().await? {
                    Ok(Message::Text(t)) => Some(Ok(t.to_string())),
                    Ok(Message::Close(_)) => None,
                    Ok(_) => continue,
                    Err(e) => Some(Err(e.to_string())),
                };
            }
        }
    }
}

pub use imp::*;

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_urls() {
        assert_eq!(
            super::websocket_url("http://127.0.0.1:8000"),
            "ws://127.0.0.1:8000/graphql"
        );
        assert_eq!(
            super::websocket_url("https://traum.example/"),
            "wss://traum.example/graphql"
        );
    }
}
