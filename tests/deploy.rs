//! The deployment files: `docker-compose.yml` is checked by a real Compose implementation
//! (`docker-compose config`, Debian's `docker-compose` package; `.ci/run` installs it). The
//! images themselves are not built here (no registry of base images is reachable).

use std::collections::BTreeMap;
use std::process::Command;

fn compose(args: &[&str]) -> Option<std::process::Output> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(root.join("docker-compose.yml"))
        .args(args)
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("docker-compose is needed in CI (.ci/run installs it): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED compose checks: docker-compose is not installed ({e}); apt-get install docker-compose");
            None
        }
    }
}

/// Each service of `docker-compose config` with its profiles (none: always started). Compose
/// 1.29 lists every service whatever `--profile` says, so the profiles are read back.
fn services_and_profiles(config: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let (mut in_services, mut service, mut in_profiles) = (false, None::<String>, false);
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 {
            in_services = text == "services:";
            continue;
        }
        if !in_services {
            continue;
        }
        if indent == 2 && text.ends_with(':') {
            let name = text.trim_end_matches(':').to_string();
            out.insert(name.clone(), Vec::new());
            service = Some(name);
            in_profiles = false;
        } else if indent >= 4 {
            match (text.strip_prefix("- "), &service) {
                // Compose 1.29 writes list items at their key's indent.
                (Some(p), Some(name)) if in_profiles => {
                    out.get_mut(name).unwrap().push(p.to_string())
                }
                _ if indent == 4 => in_profiles = text == "profiles:",
                _ => {}
            }
        }
    }
    out
}

#[test]
fn compose_file_is_valid_and_its_profiles_hold_what_the_readme_says() {
    let Some(out) = compose(&["config"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8_lossy(&out.stdout).into_owned();
    let services = services_and_profiles(&config);
    let profiles = |name: &str| -> Vec<&str> {
        services
            .get(name)
            .unwrap_or_else(|| panic!("no service {name}: {config}"))
            .iter()
            .map(String::as_str)
            .collect()
    };
    // The default: one server with embedded stores, nothing else.
    let always: Vec<&String> = services
        .iter()
        .filter(|(_, p)| p.is_empty())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(always, ["traum"], "{config}");
    for name in ["postgres", "qdrant", "traum-a", "traum-b"] {
        assert_eq!(profiles(name), ["scale"], "{name}");
    }
    assert_eq!(profiles("traum-gpu"), ["gpu"]);
    assert_eq!(services.len(), 6, "{services:?}");

    assert!(config.contains("image: qdrant/qdrant:v1.18.3"), "{config}");
    // Both replicas share the storage volume and use the shared stores.
    assert_eq!(
        config.matches("traum-storage:/storage").count(),
        2,
        "{config}"
    );
    assert_eq!(
        config.matches("TRAUM_VECTOR_STORE: qdrant").count(),
        2,
        "{config}"
    );
    assert_eq!(
        config.matches("DATABASE_URL: postgres://").count(),
        2,
        "{config}"
    );
    assert!(config.contains("driver: nvidia"), "{config}");
    // The default server's environment names no database: SQLite in its data volume.
    let default_block = config.split("\n  traum:\n").nth(1).unwrap_or_default();
    let default_block = default_block.split("\n  traum-").next().unwrap_or_default();
    assert!(!default_block.contains("DATABASE_URL"), "{default_block}");
}
