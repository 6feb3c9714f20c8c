//! The report kinds: what each one is for and which archived events it selects.

/// A kind of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Who read or changed an object (every statement that names one; `--object` for one).
    ObjectAccess,
    /// Role and privilege changes, DDL, superuser sessions, password changes, COPY PROGRAM.
    Privileged,
    /// Logins that failed (wrong password, unknown database, bad token) or that pgtrail's
    /// policy refused.
    FailedLogins,
    /// Everything one person did (`--person`: identity from the identity provider), across
    /// every database user they used.
    Person,
    /// Statements pgtrail's policy denied, and statements refused because the journal
    /// could not record them.
    Denied,
    /// What the trail may be missing: connections that bypassed pgtrail (seen in the
    /// pgAudit log), loss records, and the capture's own control events (starts, stops,
    /// journal repairs).
    Coverage,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::ObjectAccess, Kind::Privileged, Kind::FailedLogins, Kind::Person, Kind::Denied, Kind::Coverage];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ObjectAccess => "object-access",
            Kind::Privileged => "privileged",
            Kind::FailedLogins => "failed-logins",
            Kind::Person => "person",
            Kind::Denied => "denied",
            Kind::Coverage => "coverage",
        }
    }

    /// The report's title.
    pub fn title(self) -> &'static str {
        match self {
            Kind::ObjectAccess => "Object access",
            Kind::Privileged => "Privileged activity",
            Kind::FailedLogins => "Failed and refused logins",
            Kind::Person => "One person's activity",
            Kind::Denied => "Denied statements",
            Kind::Coverage => "Coverage of the trail",
        }
    }

    /// What the report lists, in one sentence for the reader.
    pub fn description(self) -> &'static str {
        match self {
            Kind::ObjectAccess => "Every statement that read or changed a database object, with who ran it.",
            Kind::Privileged => {
                "Role and privilege changes, schema changes (DDL), statements of superuser sessions, password changes and COPY to or from a program."
            }
            Kind::FailedLogins => {
                "Connections that failed to log in (for example a wrong password, an unknown database or a rejected token) or that pgtrail's policy refused."
            }
            Kind::Person => {
                "Every connection and statement of one person, as the identity provider names them, across all the database users they used."
            }
            Kind::Denied => {
                "Statements pgtrail's policy denied before they reached PostgreSQL, and statements refused because the journal could not record them."
            }
            Kind::Coverage => {
                "What the trail may be missing: connections that bypassed pgtrail (found in the pgAudit log), records of lost events, and the capture's own control events (starts, stops, journal repairs)."
            }
        }
    }

    /// The condition (SQL over the archive's `events`) an event meets to be in the report.
    pub(crate) fn condition(self) -> &'static str {
        match self {
            Kind::ObjectAccess => "type = 'record' AND (object_name IS NOT NULL OR array_length(objects) > 0)",
            Kind::Privileged => {
                "type = 'record' AND (class IN ('ROLE', 'DDL') OR superuser OR sets_password OR copy_program)"
            }
            Kind::FailedLogins => {
                "type = 'record' AND class = 'CONNECT' AND (sql_state IS NOT NULL OR error_message IS NOT NULL \
                 OR verdict = 'denied')"
            }
            Kind::Person => "type = 'record'",
            Kind::Denied => "type = 'record' AND (verdict = 'denied' OR command = 'REFUSED')",
            Kind::Coverage => "type IN ('loss', 'control') OR command = 'DIRECT CONNECTION'",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown report kind {s:?}: one of {}", names.join(", "))
        })
    }
}
