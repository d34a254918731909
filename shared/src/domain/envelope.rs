//! The SQS message body: a small versioned envelope. Content stays in the task
//! store; a message only says which task (and call) to work on.

use serde::{Deserialize, Serialize};

use super::ids::{AgentId, CallId, TaskId, TenantId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Route,
    AgentCall,
    Aggregate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u8,
    pub kind: MessageKind,
    pub tenant: TenantId,
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<CallId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// A trace id carried from intake through every stage, for log correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message body is not a valid envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
}

impl Envelope {
    pub const VERSION: u8 = 1;

    pub fn new(kind: MessageKind, tenant: TenantId, task_id: TaskId) -> Self {
        Envelope {
            v: Self::VERSION,
            kind,
            tenant,
            task_id,
            call_id: None,
            agent_id: None,
            trace: None,
        }
    }

    pub fn to_body(&self) -> String {
        // An envelope holds only strings and ids: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        let envelope: Envelope = serde_json::from_str(body)?;
        if envelope.v != Self::VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.v));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let e = Envelope::new(
            MessageKind::Route,
            TenantId::parse("acme").unwrap(),
            TaskId::new(),
        );
        let body = e.to_body();
        assert!(body.starts_with("{\"v\":1,\"kind\":\"route\""));
        assert_eq!(Envelope::parse(&body).unwrap(), e);
        let v2 = body.replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            Envelope::parse(&v2),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
        assert!(Envelope::parse("{}").is_err());
    }
}
