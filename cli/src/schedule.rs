//! `backplan schedule`: systemd units (or a cron line) that run a plan unattended.
//!
//! One oneshot service and one timer per job (backup, prune, drill) of a plan. The timer is
//! `Persistent=true`, so a run missed while the machine was off happens at the next boot, and
//! spread by `RandomizedDelaySec` so a fleet does not start at one second. Overlap is the plan's
//! own lock's business (a second run exits 75). Credentials come from an optional environment
//! file (the prune and drill jobs may have their own, for credentials of their own role), output
//! goes to the journal, and systemd's SIGTERM on stop is a clean cancel.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One job to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// `backup`, `prune` or `drill`: part of the unit's name.
    pub name: &'static str,
    /// `OnCalendar=` (systemd calendar syntax: `daily`, `*-*-* 03:00`, `Sun 04:00`).
    pub every: String,
    /// The backplan arguments after the binary (the plan's path included).
    pub args: Vec<String>,
    /// What the unit says it does.
    pub description: String,
    /// Its own environment file (other credentials), instead of the units' one.
    pub environment_file: Option<PathBuf>,
}

/// Everything the units need to know.
#[derive(Debug, Clone)]
pub(crate) struct Units {
    /// The plan's name.
    pub plan: String,
    /// The backplan binary, absolute.
    pub binary: PathBuf,
    /// The environment file (credentials, `AWS_*`); optional for systemd (`-` prefix).
    pub environment_file: PathBuf,
    /// The jobs.
    pub jobs: Vec<Job>,
}

/// A calendar expression usable in a unit file and a shell line: one line, no quotes.
pub(crate) fn check_calendar(every: &str) -> Result<String, String> {
    let every = every.trim();
    if every.is_empty() || every.contains(['\n', '\r', '"', '\'', '\\', '%', ';']) {
        return Err(format!(
            "{every:?} is not a calendar expression (e.g. daily, \"*-*-* 03:00\", \"Sun 04:00\")"
        ));
    }
    Ok(every.to_owned())
}

/// Asks `systemd-analyze calendar` whether systemd accepts `every`, where systemd is installed;
/// elsewhere the units' own load will say.
pub(crate) fn check_with_systemd(every: &str) -> Result<(), String> {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["calendar", every])
        .output()
    else {
        return Ok(());
    };
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "systemd does not accept the calendar {every:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Quotes one argument for a unit's `ExecStart=` (systemd's own quoting rules) and for sh.
fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

impl Units {
    fn unit_name(&self, job: &Job) -> String {
        format!("backplan-{}-{}", self.plan, job.name)
    }

    fn environment_file_of<'a>(&'a self, job: &'a Job) -> &'a Path {
        job.environment_file
            .as_deref()
            .unwrap_or(&self.environment_file)
    }

    fn command(&self, job: &Job) -> String {
        std::iter::once(self.binary.display().to_string())
            .chain(job.args.iter().cloned())
            .map(|a| quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The unit files: (file name, contents), service then timer for each job.
    pub(crate) fn files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        for job in &self.jobs {
            let name = self.unit_name(job);
            let mut service = String::new();
            let _ = write!(
                service,
                "# Written by `backplan schedule`; run it again to change the schedule.\n\
                 [Unit]\n\
                 Description={description}\n\
                 Wants=network-online.target\n\
                 After=network-online.target\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 EnvironmentFile=-{env}\n\
                 ExecStart={command}\n\
                 # SIGTERM cancels cleanly: running steps stop, the run is recorded, the lock freed.\n\
                 KillMode=mixed\n\
                 TimeoutStopSec=2min\n\
                 Nice=10\n\
                 IOSchedulingClass=best-effort\n\
                 IOSchedulingPriority=7\n",
                description = job.description,
                env = self.environment_file_of(job).display(),
                command = self.command(job),
            );
            let mut timer = String::new();
            let _ = write!(
                timer,
                "# Written by `backplan schedule`; run it again to change the schedule.\n\
                 [Unit]\n\
                 Description=Schedule of {description}\n\
                 \n\
                 [Timer]\n\
                 OnCalendar={every}\n\
                 # A run missed while the machine was off happens at the next boot.\n\
                 Persistent=true\n\
                 RandomizedDelaySec=15min\n\
                 Unit={name}.service\n\
                 \n\
                 [Install]\n\
                 WantedBy=timers.target\n",
                description = job.description,
                every = job.every,
            );
            files.push((format!("{name}.service"), service));
            files.push((format!("{name}.timer"), timer));
        }
        files
    }

    /// Cron lines for machines without systemd; only for the calendar words cron knows.
    pub(crate) fn cron(&self) -> Result<String, String> {
        let mut out = String::from("# m h dom mon dow  command   (backplan schedule --cron)\n");
        for job in &self.jobs {
            let when = match job.every.as_str() {
                "hourly" => "17 * * * *".to_owned(),
                "daily" => "17 3 * * *".to_owned(),
                "weekly" => "17 4 * * 0".to_owned(),
                "monthly" => "17 5 1 * *".to_owned(),
                other => match other.strip_prefix("*-*-* ").and_then(|t| t.split_once(':')) {
                    Some((h, m))
                        if h.parse::<u8>().is_ok_and(|h| h < 24)
                            && m.parse::<u8>().is_ok_and(|m| m < 60) =>
                    {
                        format!(
                            "{} {} * * *",
                            m.parse::<u8>().unwrap_or(0),
                            h.parse::<u8>().unwrap_or(0)
                        )
                    }
                    _ => {
                        return Err(format!(
                            "cron has no equivalent of {other:?}: use hourly, daily, weekly, \
                             monthly or \"*-*-* HH:MM\", or the systemd units"
                        ));
                    }
                },
            };
            let _ = writeln!(
                out,
                "{when}  set -a; [ -r {env} ] && . {env}; {command} --no-progress",
                env = quote(&self.environment_file_of(job).display().to_string()),
                command = self.command(job),
            );
        }
        Ok(out)
    }
}

/// Writes `files` into `dir` (atomically each); returns the paths written.
pub(crate) fn write(dir: &Path, files: &[(String, String)]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            backplan_core::catalog::store::write_atomic(&path, text.as_bytes())?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> Units {
        Units {
            plan: "services".into(),
            binary: "/usr/local/bin/backplan".into(),
            environment_file: "/etc/backplan/services.env".into(),
            jobs: vec![Job {
                name: "backup",
                every: "*-*-* 03:00".into(),
                args: vec!["run".into(), "/etc/backplan/my plan.toml".into()],
                description: "backplan backup of plan services".into(),
                environment_file: None,
            }],
        }
    }

    #[test]
    fn a_timer_catches_up_and_the_service_quotes_its_arguments() {
        let files = units().files();
        assert_eq!(files[0].0, "backplan-services-backup.service");
        assert!(
            files[0]
                .1
                .contains("ExecStart=/usr/local/bin/backplan run '/etc/backplan/my plan.toml'\n"),
            "{}",
            files[0].1
        );
        assert!(files[1].1.contains(
            "OnCalendar=*-*-* 03:00
"
        ));
        assert!(files[1].1.contains(
            "Persistent=true
"
        ));
    }

    #[test]
    fn a_job_with_its_own_environment_file_reads_that_one() {
        let mut units = units();
        let mut prune = units.jobs[0].clone();
        prune.name = "prune";
        prune.environment_file = Some("/etc/backplan/services-prune.env".into());
        units.jobs.push(prune);
        let files = units.files();
        assert!(
            files[0]
                .1
                .contains("EnvironmentFile=-/etc/backplan/services.env\n")
        );
        assert_eq!(files[2].0, "backplan-services-prune.service");
        assert!(
            files[2]
                .1
                .contains("EnvironmentFile=-/etc/backplan/services-prune.env\n"),
            "{}",
            files[2].1
        );
        let cron = units.cron().unwrap();
        assert!(
            cron.contains(". /etc/backplan/services-prune.env;"),
            "{cron}"
        );
    }

    #[test]
    fn cron_knows_the_simple_calendars_only() {
        let cron = units().cron().unwrap();
        assert!(cron.contains("0 3 * * *  set -a;"), "{cron}");
        let mut weekly_sunday = units();
        weekly_sunday.jobs[0].every = "Sun 04:00".into();
        assert!(weekly_sunday.cron().is_err());
    }

    #[test]
    fn a_calendar_cannot_inject_lines_or_quotes() {
        assert!(check_calendar("daily\nExecStartPre=/bin/rm").is_err());
        assert!(check_calendar("daily'; rm -rf /").is_err());
        assert_eq!(check_calendar(" daily ").unwrap(), "daily");
    }
}
