//! The Traum library's relational data: sea-orm entities for audio files
//! ([`audio_file`]), where they live ([`library_source`], [`file_location`]) and served
//! searches ([`search_log`]), and the
//! [`store`] functions the server calls on them.
//!
//! Vectors are not here: they live in the Qdrant index (`traum-index`), keyed
//! by points derived from [`audio_file::Model::id`]. GraphQL types are not here
//! either; the server maps these models onto its own.
//!
//! SQLite (a file under the data directory) is the embedded default;
//! PostgreSQL works through a `postgres://` URL. See [`store::connect_and_migrate`].

pub mod api_key;
pub mod audio_file;
pub mod file_location;
pub mod library_source;
pub mod model_index;
pub mod search_log;
pub mod server_setting;
pub mod store;

/// The migrations, re-exported so the server needs only this crate.
pub use migration;

pub mod prelude {
    //! The entities under short names.
    pub use crate::audio_file::{
        ActiveModel as AudioFileActiveModel, Column as AudioFileColumn, Entity as AudioFile,
        FileStatus, Model as AudioFileModel,
    };
    pub use crate::search_log::{
        ActiveModel as SearchLogActiveModel, Column as SearchLogColumn, Entity as SearchLog,
        Model as SearchLogModel, SearchKind,
    };
}
