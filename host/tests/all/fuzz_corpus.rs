//! The fuzz targets' corpora as regression tests (THREATS cases 3 and 26,
//! and the "keep the seed corpora in the repository" of its gaps): every
//! file under `fuzz/corpus/<target>/` goes through the body that target's
//! fuzzer calls (`fuzz/checks/`, included here), on stable. A file that
//! panics fails the test, naming the file; so does a target without a
//! corpus, or a corpus or fuzzer without its target.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/checks/mod.rs"]
mod checks;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The names of the entries of `dir` ending in `suffix`, without it.
fn names(dir: &Path, suffix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .collect()
}

#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let targets: BTreeSet<String> = checks::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(names(&fuzz_dir().join("fuzz_targets"), ".rs"), targets, "fuzz_targets/*.rs and checks::TARGETS differ");
    assert_eq!(names(&fuzz_dir().join("corpus"), ""), targets, "corpus/* and checks::TARGETS differ");
}

#[test]
fn corpora_replay_without_panics() {
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of fuzz target `{target}` ({}): {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty(), "the corpus of fuzz target `{target}` is empty");
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
                failures.push(format!("{target}: {}", file.file_name().unwrap().to_string_lossy()));
            }
        }
    }
    assert!(failures.is_empty(), "corpus files that panic (the panic messages are above):\n{}", failures.join("\n"));
}
