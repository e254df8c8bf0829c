//! `schema.graphql` at the repository root is the server's SDL. When this
//! fails, the API changed: review the diff and regenerate the file with
//! `cargo run -p traum-server -- schema > schema.graphql`.

#[test]
fn schema_file_matches_the_server() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema.graphql");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    let live = traum_server::graphql::sdl();
    if on_disk != live {
        let first_diff = on_disk
            .lines()
            .zip(live.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| on_disk.lines().count().min(live.lines().count()));
        panic!(
            "schema.graphql differs from the server's SDL from line {} on:\n  file:   {:?}\n  server: {:?}\n\
             Regenerate it: cargo run -p traum-server -- schema > schema.graphql",
            first_diff + 1,
            on_disk.lines().nth(first_diff),
            live.lines().nth(first_diff),
        );
    }
}

#[test]
fn schema_has_the_documented_operations() {
    let sdl = traum_server::graphql::sdl();
    for needle in [
        "health: Health!",
        "files(",
        "search(",
        "similar(",
        "searchStats(",
        "recentSearches(",
        "uploadFile(file: Upload!): AudioFile!",
        "uploadFiles(files: [Upload!]!): [UploadOutcome!]!",
        "searchByAudio(",
        "deleteFile(id: ID!): ID!",
        "reprocessFile(id: ID!): AudioFile!",
        "fileEvents(ids: [ID!]!): FileEvent!",
        "libraryEvents: FileEvent!",
    ] {
        assert!(sdl.contains(needle), "the schema lacks {needle:?}");
    }
}
