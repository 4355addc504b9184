//! A drill's health check: what may be checked, how it is written, and waiting for it to pass.
//!
//! A target is `HOST:PORT` (passes when a TCP connection is accepted) or an `http://` or
//! `https://` URL (passes when a GET answers with an expected status, any 2xx unless told
//! otherwise). The rules are checked twice: on the value as written, before anything is
//! launched, with every reference standing for a placeholder (so a typo is a usage error, not
//! a machine launched for nothing); and on the resolved value once the restore has run.
//!
//! The HTTP check runs ureq (blocking) on a blocking thread. Each attempt is bounded, the
//! whole wait is bounded by the timeout, and cancellation ends the wait at once: an attempt
//! still under way is abandoned, and its thread ends within that attempt's bound. Redirects
//! are not followed (the status is what the URL answered) and no proxy is used: the check
//! reaches the restored machine directly, as the TCP check does. An https certificate that is
//! not trusted ends the wait at once: the restored machine's certificate comes from its disk
//! and will not become trusted by waiting.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::plan::refs::{self, Reference, Scope};

/// The longest one attempt (a connection, a request and its answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP statuses a URL target may answer to pass: one code, or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusRange {
    low: u16,
    high: u16,
}

impl StatusRange {
    /// Any 2xx: the default.
    pub(crate) const SUCCESS: StatusRange = StatusRange {
        low: 200,
        high: 299,
    };

    fn contains(self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;

    /// `200` or `200-399`; every code from 100 to 599.
    fn from_str(text: &str) -> Result<Self, String> {
        let code = |part: &str| match part.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) && part.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(code)
            }
            _ => Err(format!(
                "health status `{text}`: write one code (`200`) or a range (`200-399`) of codes \
                 from 100 to 599"
            )),
        };
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (code(low)?, code(high)?),
            None => (code(text)?, code(text)?),
        };
        if low > high {
            return Err(format!(
                "health status `{text}`: the range must go from low to high"
            ));
        }
        Ok(StatusRange { low, high })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// A resolved health target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `HOST:PORT` (`[ADDR]:PORT` for IPv6): must accept a TCP connection.
    Tcp(String),
    /// An http(s) URL: must answer a GET with an expected status.
    Http {
        /// The URL as written.
        url: String,
        /// Whether it is https.
        tls: bool,
    },
}

const NEITHER: &str = "neither HOST:PORT nor an http:// or https:// URL (e.g. `10.0.0.5:8800`, \
                       `https://10.0.0.5/health`)";

impl Target {
    /// The target `text` stands for, or why it is none.
    pub(crate) fn parse(text: &str) -> Result<Target, String> {
        if text.is_empty() {
            return Err(format!("{NEITHER}: it is empty"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(format!("{NEITHER}: it holds white space"));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.contains('/') {
                return Err(format!("{NEITHER}: a URL starts with http:// or https://"));
            }
            let (_, port) = host_and_port(text)?;
            port.ok_or_else(|| format!("{NEITHER}: it has no port"))?;
            return Ok(Target::Tcp(text.to_owned()));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(NEITHER.to_owned()),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(
                "the URL holds credentials: they would be written to the run record, \
                        and the health check sends none"
                    .into(),
            );
        }
        host_and_port(authority)?;
        ureq::http::Uri::try_from(text).map_err(|e| format!("not a valid URL: {e}"))?;
        Ok(Target::Http {
            url: text.to_owned(),
            tls,
        })
    }
}

/// Splits `HOST[:PORT]` (or `[ADDR][:PORT]`), checking there is a host and that a port, if
/// any, is a number from 1 to 65535.
fn host_and_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address opened with `[` is not closed with `]`")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("only `:PORT` may follow `]`")?,
            ),
        };
        (address, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".into());
    }
    if host.contains(':') && !authority.starts_with('[') {
        return Err("write an IPv6 address in brackets: `[ADDR]:PORT`".into());
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Some(number),
            _ => return Err(format!("the port `{port}` is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// Checks `written` (a health target that may hold references) before anything is launched:
/// malformed references, unset environment variables and a shape that cannot be a target are
/// refused. Each step output stands for `1`, which fits a host, a port and a path alike.
pub(crate) fn check_written(written: &str) -> Result<Target, String> {
    let mut scope = Scope {
        run_id: "1".into(),
        plan_name: "1".into(),
        plan_dir: "1".into(),
        state_dir: "1".into(),
        ..Scope::default()
    };
    let in_target = |why: String| format!("health target `{written}`: {why}");
    for reference in refs::references(written).map_err(in_target)? {
        if let Reference::StepOutput { step, key } = reference {
            let outputs = scope.outputs.entry(step).or_default();
            outputs.insert(key, serde_json::Value::String("1".into()));
        }
    }
    let masked = resolve(&scope, written).map_err(in_target)?;
    Target::parse(&masked).map_err(in_target)
}

/// `written` with its references resolved in `scope`; a step output that does not exist (the
/// step did not run, or returned no such key) is an error here, not a target to wait for.
pub(crate) fn resolve(scope: &Scope, written: &str) -> Result<String, String> {
    for reference in refs::references(written)? {
        if let Reference::StepOutput { step, key } = reference
            && !scope
                .outputs
                .get(&step)
                .is_some_and(|o| o.contains_key(&key))
        {
            return Err(format!(
                "`${{steps.{step}.outputs.{key}}}`: step `{step}` has no output `{key}`"
            ));
        }
    }
    let resolved = scope.resolve_config(&serde_json::Value::String(written.to_owned()))?;
    Ok(resolved.as_str().unwrap_or_default().to_owned())
}

/// What an http(s) target must answer, and how its certificate is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpRules {
    /// The statuses that pass.
    pub(crate) expect: StatusRange,
    /// Accept any certificate.
    pub(crate) insecure: bool,
}

/// A target ready to be checked.
#[derive(Debug)]
pub(crate) enum Probe {
    /// Connect to `HOST:PORT`.
    Tcp(String),
    /// GET the URL.
    Http {
        /// The URL.
        url: String,
        /// The statuses that pass.
        expect: StatusRange,
        /// The client, configured once for the whole wait.
        agent: ureq::Agent,
    },
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// A connection was accepted, or the URL answered this expected status.
    Passed(Option<u16>),
    /// The URL answered, with a status that does not pass.
    Answered(u16),
    /// Nothing answered: why.
    NoAnswer(String),
    /// The answer showed the check can never pass (an untrusted certificate): why.
    Never(String),
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Waited {
    /// The status the URL last answered with (http(s) targets).
    pub(crate) status: Option<u16>,
    /// Passed, or why not.
    pub(crate) result: Result<(), String>,
}

impl Probe {
    /// The probe of `target`; `http` applies to URL targets.
    pub(crate) fn new(target: Target, http: HttpRules) -> Probe {
        match target {
            Target::Tcp(address) => Probe::Tcp(address),
            Target::Http { url, tls } => {
                let tls_config = ureq::tls::TlsConfig::builder()
                    .disable_verification(tls && http.insecure)
                    .build();
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .max_redirects(0)
                    .proxy(None)
                    .tls_config(tls_config)
                    .user_agent(concat!("backplan/", env!("CARGO_PKG_VERSION"), " drill"))
                    .build()
                    .into();
                Probe::Http {
                    url,
                    expect: http.expect,
                    agent,
                }
            }
        }
    }

    /// What is checked, for messages.
    fn target(&self) -> &str {
        match self {
            Probe::Tcp(address) => address,
            Probe::Http { url, .. } => url,
        }
    }

    /// One attempt, within `bound`.
    async fn attempt(&self, bound: Duration) -> Attempt {
        match self {
            Probe::Tcp(address) => {
                match tokio::time::timeout(bound, TcpStream::connect(address)).await {
                    Ok(Ok(_)) => Attempt::Passed(None),
                    Ok(Err(e)) => Attempt::NoAnswer(e.to_string()),
                    Err(_) => Attempt::NoAnswer("the connection attempt timed out".into()),
                }
            }
            Probe::Http { url, expect, agent } => {
                let (url, agent) = (url.clone(), agent.clone());
                let request = tokio::task::spawn_blocking(move || {
                    agent
                        .get(&url)
                        .config()
                        .timeout_global(Some(bound))
                        .build()
                        .call()
                        .map(|response| response.status().as_u16())
                });
                match tokio::time::timeout(bound, request).await {
                    Ok(Ok(Ok(status))) if expect.contains(status) => Attempt::Passed(Some(status)),
                    Ok(Ok(Ok(status))) => Attempt::Answered(status),
                    Ok(Ok(Err(e))) if untrusted_certificate(&e) => Attempt::Never(format!(
                        "{e}: the certificate is not trusted (`--health-insecure` accepts any)"
                    )),
                    Ok(Ok(Err(e))) => Attempt::NoAnswer(e.to_string()),
                    Ok(Err(e)) => Attempt::NoAnswer(format!("the request failed: {e}")),
                    Err(_) => Attempt::NoAnswer("the request timed out".into()),
                }
            }
        }
    }

    /// Checks until it passes, `timeout` passes (attempts `interval` apart) or `cancel` fires.
    pub(crate) async fn wait(
        &self,
        timeout: Duration,
        interval: Duration,
        cancel: &CancellationToken,
    ) -> Waited {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        let mut last;
        let cancelled = |status| Waited {
            status,
            result: Err("cancelled while waiting for the health check".into()),
        };
        let failed = |status, message: String| Waited {
            status,
            result: Err(message),
        };
        loop {
            let bound = ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            let attempt = tokio::select! {
                attempt = self.attempt(bound) => attempt,
                () = cancel.cancelled() => return cancelled(status),
            };
            match attempt {
                Attempt::Passed(answered) => {
                    return Waited {
                        status: answered,
                        result: Ok(()),
                    };
                }
                Attempt::Answered(answered) => {
                    status = Some(answered);
                    last = format!("answered {answered}");
                }
                Attempt::NoAnswer(why) => {
                    last = match status {
                        Some(answered) => format!("{why}; it answered {answered} before"),
                        None => why,
                    }
                }
                Attempt::Never(why) => return failed(status, format!("{}: {why}", self.target())),
            }
            tracing::debug!(target = %self.target(), "drill: health check not passed: {last}");
            if Instant::now() + interval >= deadline {
                let wanted = match self {
                    Probe::Tcp(_) => "accept a connection".to_owned(),
                    Probe::Http { expect, .. } => format!("answer {expect}"),
                };
                let within = humantime::format_duration(timeout);
                let target = self.target();
                let message = format!("{target} did not {wanted} within {within} (last: {last})");
                return failed(status, message);
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = cancel.cancelled() => return cancelled(status),
            }
        }
    }
}

/// Whether `error` is rustls refusing the server's certificate (unknown issuer, wrong name,
/// expired...), as opposed to a connection that failed.
fn untrusted_certificate(error: &ureq::Error) -> bool {
    let rustls = match error {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(rustls, Some(rustls::Error::InvalidCertificate(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Result<StatusRange, String> {
        text.parse()
    }

    #[test]
    fn a_status_is_one_code_or_a_range_from_100_to_599() {
        assert_eq!(
            range("200").unwrap(),
            StatusRange {
                low: 200,
                high: 200
            }
        );
        assert_eq!(
            range("200-399").unwrap(),
            StatusRange {
                low: 200,
                high: 399
            }
        );
        assert_eq!(range("100-599").unwrap().to_string(), "100-599");
        assert_eq!(range("204").unwrap().to_string(), "204");
        assert_eq!(StatusRange::SUCCESS.to_string(), "200-299");
        for bad in [
            "",
            "99",
            "600",
            "0",
            "-1",
            "200-",
            "-200",
            "2xx",
            "200-600",
            "+200",
            " 200",
            "200 ",
            "200-300-400",
            "65736",
        ] {
            let error = range(bad).unwrap_err();
            assert!(error.contains("from 100 to 599"), "{bad:?}: {error}");
        }
        assert!(range("399-200").unwrap_err().contains("low to high"));
    }

    #[test]
    fn a_status_range_holds_both_ends() {
        let range = range("200-399").unwrap();
        assert!(range.contains(200) && range.contains(302) && range.contains(399));
        assert!(!range.contains(199) && !range.contains(400));
    }

    #[test]
    fn a_target_is_host_and_port_or_an_http_url() {
        assert_eq!(
            Target::parse("10.0.0.5:8800").unwrap(),
            Target::Tcp("10.0.0.5:8800".into())
        );
        assert_eq!(
            Target::parse("[::1]:8800").unwrap(),
            Target::Tcp("[::1]:8800".into())
        );
        assert_eq!(
            Target::parse("circleci.internal:443").unwrap(),
            Target::Tcp("circleci.internal:443".into())
        );
        assert_eq!(
            Target::parse("http://10.0.0.5:8800/healthz?full=1").unwrap(),
            Target::Http {
                url: "http://10.0.0.5:8800/healthz?full=1".into(),
                tls: false
            }
        );
        for url in [
            "https://10.0.0.5",
            "HTTPS://[::1]:8443/",
            "https://host.example/a/b",
        ] {
            assert!(
                matches!(Target::parse(url).unwrap(), Target::Http { tls: true, .. }),
                "{url}"
            );
        }
    }

    #[test]
    fn a_target_without_a_host_or_a_usable_port_is_refused() {
        let cases = [
            ("", "empty"),
            ("10.0.0.5", "no port"),
            (":8800", "no host"),
            ("10.0.0.5:", "not a number"),
            ("10.0.0.5:0", "not a number"),
            ("10.0.0.5:65536", "not a number"),
            ("10.0.0.5:http", "not a number"),
            ("10.0.0.5:+80", "not a number"),
            ("::1:8800", "brackets"),
            ("[::1:8800", "not closed"),
            ("[::1]8800", "may follow"),
            ("10.0.0.5:8800/health", "starts with http"),
            ("10.0.0.5 :8800", "white space"),
            ("http://", "no host"),
            ("http:///health", "no host"),
            ("https://:8443/", "no host"),
            ("http://10.0.0.5:/", "not a number"),
            ("http://10.0.0.5:99999/", "not a number"),
            ("ftp://10.0.0.5/", "neither"),
            ("tcp://10.0.0.5:22", "neither"),
            ("http://admin:secret@10.0.0.5/", "credentials"),
            ("http://10.0.0.5/a b", "white space"),
            ("http://10.0.0.5/\u{7f}", "not a valid URL"),
        ];
        for (text, why) in cases {
            let error = Target::parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }

    #[test]
    fn references_stand_for_any_host_port_or_path_before_the_restore() {
        for written in [
            "${steps.machine.outputs.private_ip}:8800",
            "${steps.machine.outputs.private_ip}:${steps.machine.outputs.port}",
            "https://${steps.machine.outputs.hostname}/${run.id}/health",
            "http://${steps.machine.outputs.private_ip}:8800/${steps.machine.outputs.path}",
        ] {
            check_written(written).unwrap_or_else(|e| panic!("{written}: {e}"));
        }
        let cases = [
            ("${steps.machine.outputs.endpoint}", "no port"),
            ("${steps.machine.outputs.ip", "unclosed"),
            ("${steps.machine.ip}:80", "unknown reference"),
            ("${env.BACKPLAN_TEST_SURELY_UNSET}:80", "not set"),
            ("${steps.machine.outputs.ip}", "no port"),
            ("http://:${steps.machine.outputs.port}/", "no host"),
        ];
        for (written, why) in cases {
            let error = check_written(written).unwrap_err();
            assert!(error.contains(why), "{written:?}: {error}");
            assert!(error.contains(written), "{written:?}: {error}");
        }
    }

    #[test]
    fn a_step_output_the_restore_did_not_return_is_an_error_not_a_target() {
        let mut scope = Scope::default();
        scope.outputs.insert(
            "machine".into(),
            [("private_ip".to_owned(), serde_json::json!("10.0.0.9"))].into(),
        );
        assert_eq!(
            resolve(&scope, "http://${steps.machine.outputs.private_ip}:8800/").unwrap(),
            "http://10.0.0.9:8800/"
        );
        let error = resolve(&scope, "${steps.machine.outputs.public_ip}:8800").unwrap_err();
        assert!(
            error.contains("step `machine` has no output `public_ip`"),
            "{error}"
        );
        let error = resolve(&scope, "${steps.other.outputs.ip}:8800").unwrap_err();
        assert!(error.contains("step `other` has no output `ip`"), "{error}");
    }
}
