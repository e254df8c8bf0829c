//! sea-orm entities of the Traum library. The service issue adds the audio-file and search-log tables here.
