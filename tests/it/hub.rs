//! `--model org/name[@rev]` through hf-hub's cache, offline, on a cache laid out exactly as
//! hf-hub and huggingface_hub write it (refs → snapshots → symlinks into blobs).

use std::path::Path;

const REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const COMMIT: &str = "12fd25f77366fa6b3b4b768ec3050bf629380bac";

/// `$HF_HOME/hub/models--org--name/{refs/main, snapshots/COMMIT/*, blobs/*}`.
fn hub_cache(hf_home: &Path) {
    let (folder, _) = crate::common::smollm2();
    let repo = hf_home
        .join("hub")
        .join(format!("models--{}", REPO.replace('/', "--")));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Blobs are named by content hash; any unique name shows the symlink indirection works.
        let blob = repo.join("blobs").join(format!("blob-{name}"));
        std::os::unix::fs::symlink(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snap.join(&name)).unwrap();
    }
}

fn switchyard(hf_home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = crate::common::run(
        crate::common::bare()
            .env("HF_HOME", hf_home)
            .env("HF_HUB_OFFLINE", "1")
            .env("SWITCHYARD_HOME", hf_home.join("no-switchyard-home"))
            .args(args),
    );
    (out.ok, out.stdout, out.stderr)
}

#[test]
fn hub_ids_resolve_offline_through_the_standard_cache() {
    let tmp = tempfile::tempdir().unwrap();
    hub_cache(tmp.path());
    for spec in [REPO.to_string(), format!("{REPO}@{COMMIT}")] {
        let (ok, out, err) = switchyard(
            tmp.path(),
            &[
                "generate",
                "--model",
                &spec,
                "--max-tokens",
                "12",
                "What is the capital of France?",
            ],
        );
        assert!(ok, "{spec}: {err}");
        assert_eq!(out.trim(), "The capital of France is Paris.");
    }
    let (ok, out, err) = switchyard(tmp.path(), &["models", "inspect", REPO]);
    assert!(ok, "{err}");
    assert!(
        out.contains("LlamaForCausalLM") && out.contains(COMMIT),
        "{out}"
    );
}

#[test]
fn a_revision_missing_from_the_offline_cache_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    hub_cache(tmp.path());
    let (ok, _, err) = switchyard(tmp.path(), &["models", "inspect", &format!("{REPO}@v9")]);
    assert!(!ok);
    assert!(
        err.contains("config.json") && err.contains("HF_HUB_OFFLINE") && err.contains("@v9"),
        "{err}"
    );
}
