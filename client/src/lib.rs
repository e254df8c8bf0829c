//! The Traum web client. The client issue builds the dioxus app here; `traum serve` will serve it.
