//! sea-orm migrations of the Traum library. The service issue adds them; the server runs them at start-up.
