//! The scenarios of a run ([`Scenario`]) and the weights of the mixed one ([`Mix`]).

/// The scenario of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Remote users subscribe to local users (fresh pairs only).
    Subscribe,
    /// Presence both ways over established subscriptions.
    Presence,
    /// Message round trips both ways.
    Message,
    /// Peers drop and reopen their streams while their users send messages.
    Churn,
    /// A Gmail-like blend of all of them ([`Mix`]).
    Mixed,
}

impl Scenario {
    /// Parses a scenario name.
    pub fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "subscribe" => Scenario::Subscribe,
            "presence" => Scenario::Presence,
            "message" => Scenario::Message,
            "churn" => Scenario::Churn,
            "mixed" => Scenario::Mixed,
            _ => return None,
        })
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Subscribe => "subscribe",
            Scenario::Presence => "presence",
            Scenario::Message => "message",
            Scenario::Churn => "churn",
            Scenario::Mixed => "mixed",
        }
    }
}

/// Weights of the operations in the `mixed` scenario (relative, any scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mix {
    /// Presence changes (half local, half remote).
    pub presence: u32,
    /// Message round trips.
    pub message: u32,
    /// New subscriptions.
    pub subscribe: u32,
    /// Stream churn.
    pub churn: u32,
}

impl Default for Mix {
    /// Presence-heavy, as a presence deployment's federation traffic is: 60 % presence,
    /// 30 % messages, 8 % subscriptions, 2 % churn.
    fn default() -> Self {
        Mix {
            presence: 60,
            message: 30,
            subscribe: 8,
            churn: 2,
        }
    }
}

impl Mix {
    /// Parses `presence=60,message=30,subscribe=8,churn=2` (missing keys are 0).
    ///
    /// Errors: a message naming the bad part.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut m = Mix {
            presence: 0,
            message: 0,
            subscribe: 0,
            churn: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected name=weight"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            match k.trim() {
                "presence" => m.presence = v,
                "message" => m.message = v,
                "subscribe" => m.subscribe = v,
                "churn" => m.churn = v,
                other => {
                    return Err(format!(
                        "`{other}`: not one of presence, message, subscribe, churn"
                    ))
                }
            }
        }
        if m.presence + m.message + m.subscribe + m.churn == 0 {
            return Err("all weights are zero".into());
        }
        Ok(m)
    }
}
