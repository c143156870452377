//! What can go wrong in a client command, and the exit code each kind maps to: 2 when the
//! command line or an input file is wrong (nothing was sent), 1 when the API or the system
//! refused or failed.

use std::process::ExitCode;

/// A client command's failure, printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the settings it needs are wrong.
    #[error("{0}")]
    Usage(String),
    /// An input file cannot be used; nothing was changed.
    #[error("{0}")]
    InvalidFile(String),
    /// The API answered with an error.
    #[error("{status} {code}: {}{message}{hint}", field.as_deref().filter(|f| !f.is_empty()).map(|f| format!("{f}: ")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        field: Option<String>,
        message: String,
        /// What to check, for errors a setting usually explains (a wrong token).
        hint: String,
    },
    /// The registry is in a state the command cannot work with (two webhooks of one name).
    #[error("{0}")]
    Conflict(String),
    /// The API does not offer what the command needs (an ingest older than the client).
    #[error("{0}")]
    Unsupported(String),
    /// Nothing answered at the API's address.
    #[error("cannot reach the KiviHook API at {url} ({reason}); set KIVIHOOK_API_URL or --api-url to the address ingest serves on")]
    Unreachable { url: String, reason: String },
    /// Reading input, writing output, or talking HTTP failed otherwise.
    #[error("{0}")]
    Io(String),
    /// The same, with what was being done when it failed (which entry of a file, which id).
    #[error("{context}: {source}")]
    During {
        context: String,
        source: Box<CliError>,
    },
}

impl CliError {
    /// Say what was being done when this happened.
    pub fn during(self, context: impl Into<String>) -> Self {
        Self::During {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The HTTP status of an API error, wherever it is wrapped.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::During { source, .. } => source.status(),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) | Self::InvalidFile(_) => ExitCode::from(2),
            Self::During { source, .. } => source.exit_code(),
            Self::Api { .. }
            | Self::Conflict(_)
            | Self::Unsupported(_)
            | Self::Unreachable { .. }
            | Self::Io(_) => ExitCode::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_reads_as_status_code_field_and_message() {
        let e = CliError::Api {
            status: 422,
            code: "invalid_field".into(),
            field: Some("url".into()),
            message: "must be an http:// or https:// URL".into(),
            hint: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "422 invalid_field: url: must be an http:// or https:// URL"
        );
        let e = e.during("webhooks[2] (webhook `crm`)");
        assert!(e
            .to_string()
            .starts_with("webhooks[2] (webhook `crm`): 422 "));
        assert_eq!(e.status(), Some(422));
        assert_eq!(e.exit_code(), ExitCode::FAILURE);
        assert_eq!(
            CliError::InvalidFile("x".into()).exit_code(),
            ExitCode::from(2)
        );
    }
}
