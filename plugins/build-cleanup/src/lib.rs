//! `build-cleanup`: the builds that were running when the backup was taken.
//!
//! A CircleCI Server restored from a backup shows the builds that were in flight at that moment
//! as running forever; CircleCI's guide has the operator delete each with
//! `(admin/delete-build "https://HOST/gh/ORG/PROJECT/NUM")` in `circleci dev-console`. This
//! plugin records exactly those builds at backup time (from the CircleCI API with a token, or
//! from a configured command), and at restore produces the delete lines and, when asked, feeds
//! them to the dev console.

mod builds;
mod plugin;

pub use plugin::plugin_descriptor;
