//! The cloud permissions a step needs, split by the role that holds them.
//!
//! A single policy for everything would let the machine that makes the backups (the one most
//! exposed: it runs the service, nightly and unattended) also delete every backup it ever made.
//! So `backplan plan permissions --role ROLE` prints one policy per [`Role`]: the backup role
//! never destroys a backup, retention alone holds the deletes, and restore reads backups.
//!
//! A plugin says which role needs which statement with [`Permissions::grant`]. The answer keeps
//! the whole policy in [`Permissions::aws_iam_statements`] as well, so a host older than roles
//! still prints a complete policy; a plugin built before roles answers only that list, and the
//! host then gives every statement to every role ([`Permissions::statements_for`]) and warns
//! when that puts a destructive action into a role that should not have one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Action;

/// Whose credentials an action runs with: what `backplan plan permissions --role` prints a
/// policy for.
///
/// New roles may come in later SDK versions, so the enum is `#[non_exhaustive]` and reads any
/// name it does not know as [`Role::Unknown`], which a [`Permissions`] drops when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Role {
    /// What the machine being backed up runs unattended: check, backup, verify (and `status`,
    /// `metrics`). Never needs to destroy a backup, not even when a backup fails: what a failed
    /// backup leaves is tagged for prune to remove.
    Backup,
    /// Retention: `backplan prune` (check and prune). The only role that deletes backups.
    Prune,
    /// Restore, restore drills (restore, verify, teardown of what the drill launched) and
    /// `backplan catalog rebuild` (discover). Reads backups, never destroys one.
    Restore,
    /// A role this SDK version does not know (named by a newer plugin or host). Never asked for.
    #[serde(other)]
    Unknown,
}

impl Role {
    /// Every role, in the order `plan permissions` names them.
    pub const ALL: [Role; 3] = [Role::Backup, Role::Prune, Role::Restore];

    /// The lower-case name used on the command line and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backup => "backup",
            Role::Prune => "prune",
            Role::Restore => "restore",
            Role::Unknown => "unknown",
        }
    }

    /// The plugin actions run with this role's credentials.
    pub fn actions(self) -> &'static [Action] {
        match self {
            Role::Backup => &[Action::Check, Action::Backup, Action::Verify],
            Role::Prune => &[Action::Check, Action::Prune],
            Role::Restore => &[
                Action::Check,
                Action::Restore,
                Action::Verify,
                Action::Teardown,
                Action::Discover,
            ],
            Role::Unknown => &[],
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cloud permissions a step needs (the record of a `permissions` answer).
///
/// Build it with [`Permissions::grant`], which names the roles of each statement:
///
/// ```
/// use backplan_plugin_sdk::{Permissions, Role};
/// use serde_json::json;
///
/// let permissions = Permissions::default()
///     .grant(&Role::ALL, json!({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}))
///     .grant(&[Role::Backup], json!({"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": "*"}))
///     .grant(&[Role::Prune], json!({"Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": "*"}));
/// assert_eq!(permissions.aws_iam_statements.len(), 3);
/// assert_eq!(permissions.statements_for(Role::Backup).len(), 2);
/// assert_eq!(permissions.statements_for(Role::Restore).len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Permissions {
    /// Every AWS IAM policy statement the step needs, whatever the role
    /// (`{"Effect": "Allow", "Action": [...], "Resource": ...}`), each once: the policy of a
    /// single role for everything. All a plugin built before roles answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_iam_statements: Vec<Value>,
    /// The statements each role needs, each one also in `aws_iam_statements`; a role not listed
    /// needs nothing. `None` when the plugin did not say (it was built before roles): every role
    /// then gets every statement.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_roles"
    )]
    pub roles: Option<BTreeMap<Role, Vec<Value>>>,
}

impl Permissions {
    /// Adds `statement` for each of `roles` (and once to the whole policy). A plugin that calls
    /// it says per role what it needs, even if `roles` is empty.
    pub fn grant(mut self, roles: &[Role], statement: Value) -> Self {
        let by_role = self.roles.get_or_insert_with(BTreeMap::new);
        for role in roles.iter().filter(|r| **r != Role::Unknown) {
            let statements = by_role.entry(*role).or_default();
            if !statements.contains(&statement) {
                statements.push(statement.clone());
            }
        }
        if !self.aws_iam_statements.contains(&statement) {
            self.aws_iam_statements.push(statement);
        }
        self
    }

    /// Whether the plugin said which role needs which statement.
    pub fn is_split(&self) -> bool {
        self.roles.is_some()
    }

    /// The statements `role` needs: those the plugin granted it, or every statement when the
    /// plugin did not split them by role.
    pub fn statements_for(&self, role: Role) -> &[Value] {
        match &self.roles {
            Some(by_role) => by_role.get(&role).map_or(&[], Vec::as_slice),
            None => &self.aws_iam_statements,
        }
    }
}

/// Reads the statements per role, leaving out the roles this SDK does not know.
fn known_roles<'de, D: serde::Deserializer<'de>>(
    reader: D,
) -> Result<Option<BTreeMap<Role, Vec<Value>>>, D::Error> {
    let by_name = Option::<BTreeMap<String, Vec<Value>>>::deserialize(reader)?;
    Ok(by_name.map(|by_name| {
        by_name
            .into_iter()
            .filter_map(|(name, statements)| {
                let role = serde_json::from_value(Value::String(name)).unwrap_or(Role::Unknown);
                (role != Role::Unknown).then_some((role, statements))
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn statement(action: &str) -> Value {
        json!({"Effect": "Allow", "Action": [action], "Resource": "*"})
    }

    #[test]
    fn an_answer_of_a_plugin_built_before_roles_gives_every_role_every_statement() {
        let old: Permissions = serde_json::from_value(json!({
            "aws_iam_statements": [statement("s3:GetObject"), statement("s3:DeleteObject")]
        }))
        .unwrap();
        assert!(!old.is_split());
        for role in Role::ALL {
            assert_eq!(old.statements_for(role).len(), 2, "{role}");
        }
    }

    #[test]
    fn a_split_answer_gives_each_role_only_its_statements_and_old_hosts_the_whole_policy() {
        let split = Permissions::default()
            .grant(&Role::ALL, statement("s3:GetObject"))
            .grant(&[Role::Prune], statement("s3:DeleteObject"));
        let sent = serde_json::to_value(&split).unwrap();
        assert_eq!(
            sent["aws_iam_statements"],
            json!([statement("s3:GetObject"), statement("s3:DeleteObject")]),
            "a host older than roles reads the whole policy"
        );
        let read: Permissions = serde_json::from_value(sent).unwrap();
        assert_eq!(read, split);
        assert_eq!(
            read.statements_for(Role::Backup),
            [statement("s3:GetObject")]
        );
        assert_eq!(read.statements_for(Role::Prune).len(), 2);
        let nothing = Permissions::default().grant(&[], statement("s3:GetObject"));
        assert!(nothing.is_split());
        assert!(nothing.statements_for(Role::Backup).is_empty());
    }

    #[test]
    fn a_role_this_sdk_does_not_know_is_dropped_when_read() {
        let newer: Permissions = serde_json::from_value(json!({
            "aws_iam_statements": [statement("s3:GetObject")],
            "roles": {"monitor": [statement("s3:GetObject")], "backup": [statement("s3:GetObject")]}
        }))
        .unwrap();
        let roles = newer.roles.unwrap();
        assert_eq!(roles.keys().copied().collect::<Vec<_>>(), [Role::Backup]);
        let role: Role = serde_json::from_str(r#""monitor""#).unwrap();
        assert_eq!(role, Role::Unknown);
    }
}
