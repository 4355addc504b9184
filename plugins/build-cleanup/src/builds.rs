//! Finding the in-flight builds: the CircleCI v1.1 API (`recent-builds`) or a command's output;
//! and, before a restore deletes one, asking the API whether it is still unfinished.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lifecycles of a build that has not finished (and would show as running forever).
pub(crate) const UNFINISHED: [&str; 4] = ["running", "queued", "scheduled", "not_running"];

/// One build that was not finished at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Build {
    /// `https://HOST/gh/ORG/PROJECT/NUM`.
    pub url: String,
    /// Its lifecycle then, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiBuild {
    build_url: Option<String>,
    lifecycle: Option<String>,
}

/// Why the builds could not be listed.
#[derive(Debug)]
pub(crate) enum ListError {
    /// The server said no (bad token, wrong URL): retrying will not help.
    Refused(String),
    /// The server could not be reached or failed: a retry may help.
    Unreachable(String),
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The unfinished builds among the most recent `pages` × 100 builds of the install at
/// `api_url`, newest first.
pub(crate) fn from_api(api_url: &str, token: &str, pages: u32) -> Result<Vec<Build>, ListError> {
    let agent = agent();
    let mut found = Vec::new();
    for page in 0..pages.max(1) {
        let url = format!(
            "{}/api/v1.1/recent-builds?limit=100&offset={}&shallow=true",
            api_url.trim_end_matches('/'),
            page * 100
        );
        let mut response = agent
            .get(&url)
            .header("Circle-Token", token)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| ListError::Unreachable(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 | 404 => {
                return Err(ListError::Refused(format!(
                    "GET {url}: HTTP {status} (check the API URL and the token)"
                )));
            }
            _ => return Err(ListError::Unreachable(format!("GET {url}: HTTP {status}"))),
        }
        let builds: Vec<ApiBuild> = response
            .body_mut()
            .read_json()
            .map_err(|e| ListError::Refused(format!("GET {url}: not a list of builds: {e}")))?;
        let last_page = builds.len() < 100;
        found.extend(builds.into_iter().filter_map(|b| {
            let lifecycle = b.lifecycle?;
            UNFINISHED.contains(&lifecycle.as_str()).then_some(Build {
                url: b.build_url?,
                lifecycle: Some(lifecycle),
            })
        }));
        if last_page {
            break;
        }
    }
    Ok(found)
}

/// What the API says of a recorded build now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Now {
    /// Still not finished (its lifecycle): the restored install shows it running forever.
    Unfinished(String),
    /// Finished, or never to run (its lifecycle): deleting it would lose its result.
    Finished(String),
    /// The API cannot say (why): nothing proves it stuck, so it is left alone.
    Unknown(String),
}

#[derive(Debug, Deserialize)]
struct ApiLifecycle {
    lifecycle: Option<String>,
}

/// The API path of the build at `url` (`https://HOST/gh/ORG/PROJECT/NUM`):
/// `project/github/ORG/PROJECT/NUM`. `None` when the URL does not end that way.
fn project_path(url: &str) -> Option<String> {
    let path = url.split_once("://")?.1.split_once('/')?.1;
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let [.., vcs, org, project, num] = parts.as_slice() else {
        return None;
    };
    let vcs = match *vcs {
        "gh" | "github" => "github",
        "bb" | "bitbucket" => "bitbucket",
        _ => return None,
    };
    // Names as GitHub and Bitbucket allow them; `.` and `..` would walk out of the path.
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars().any(|c| c != '.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let numbered = !num.is_empty() && num.chars().all(|c| c.is_ascii_digit());
    (plain(org) && plain(project) && numbered)
        .then(|| format!("project/{vcs}/{org}/{project}/{num}"))
}

/// Asks the install at `api_url` about `build` (the token goes to `api_url` only, never to the
/// host a recorded URL names).
pub(crate) fn now(api_url: &str, token: &str, build: &Build) -> Result<Now, ListError> {
    let Some(path) = project_path(&build.url) else {
        return Ok(Now::Unknown(
            "not a build URL the API can be asked about (HOST/gh/ORG/PROJECT/NUM)".into(),
        ));
    };
    let url = format!("{}/api/v1.1/{path}", api_url.trim_end_matches('/'));
    let mut response = agent()
        .get(&url)
        .header("Circle-Token", token)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| ListError::Unreachable(format!("GET {url}: {e}")))?;
    let status = response.status().as_u16();
    match status {
        200 => {}
        404 => return Ok(Now::Unknown("the API does not know it (HTTP 404)".into())),
        401 | 403 => {
            return Err(ListError::Refused(format!(
                "GET {url}: HTTP {status} (check the API URL and the token)"
            )));
        }
        _ => return Err(ListError::Unreachable(format!("GET {url}: HTTP {status}"))),
    }
    let answer: ApiLifecycle = response
        .body_mut()
        .read_json()
        .map_err(|e| ListError::Refused(format!("GET {url}: not a build: {e}")))?;
    Ok(match answer.lifecycle {
        Some(l) if UNFINISHED.contains(&l.as_str()) => Now::Unfinished(l),
        Some(l) => Now::Finished(l),
        None => Now::Unknown("the API gave no lifecycle".into()),
    })
}

/// Build URLs from a command's output: one per line; blank lines and `#` comments skipped.
pub(crate) fn from_lines(text: &str) -> Vec<Build> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|url| Build {
            url: url.to_owned(),
            lifecycle: None,
        })
        .collect()
}

/// The dev-console line that deletes `build`, or why the URL cannot be used in one.
pub(crate) fn delete_line(build: &Build) -> Result<String, String> {
    let url = &build.url;
    let plausible = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(['"', '\\', '(', ')', ' ', '\n']);
    if !plausible {
        return Err(format!(
            "{url:?} is not a build URL that can be quoted safely"
        ));
    }
    Ok(format!("(admin/delete-build \"{url}\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_builds_and_safe_delete_lines() {
        let builds = from_lines("# running\nhttps://ci.example.com/gh/acme/api/1042\n\n");
        assert_eq!(builds.len(), 1);
        assert_eq!(
            delete_line(&builds[0]).unwrap(),
            "(admin/delete-build \"https://ci.example.com/gh/acme/api/1042\")"
        );
    }

    #[test]
    fn build_urls_map_to_their_api_paths() {
        assert_eq!(
            project_path("https://ci.example.com/gh/acme/api/1042").as_deref(),
            Some("project/github/acme/api/1042")
        );
        assert_eq!(
            project_path("http://127.0.0.1:9/bb/acme/web.site/7/").as_deref(),
            Some("project/bitbucket/acme/web.site/7")
        );
        for odd in [
            "https://ci.example.com/gh/acme/api/latest",
            "https://ci.example.com/gh/acme/../1",
            "https://ci.example.com/gl/acme/api/1",
            "https://ci.example.com/1",
            "ci.example.com/gh/acme/api/1",
        ] {
            assert_eq!(project_path(odd), None, "{odd}");
        }
    }

    #[test]
    fn a_url_that_could_break_out_of_the_quotes_is_refused() {
        let evil = Build {
            url: "https://x/gh/a/b/1\") (admin/delete-everything".into(),
            lifecycle: None,
        };
        assert!(delete_line(&evil).is_err());
    }
}
