//! Helpers shared by the end-to-end tests in `tests/`.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `shared/` folder beside the repository (design docs and fixtures).
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}
