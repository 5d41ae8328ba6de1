//! Answering a registry's auth challenge: Basic, or Docker's token flow
//! (`Bearer realm=…,service=…,scope=…`), with tokens cached per scope.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use reqwest::blocking::Client as Http;

/// What the user gave to prove who they are.
#[derive(Clone)]
pub enum Credential {
    /// `NAME:SECRET`.
    Basic { user: String, secret: String },
    /// A bare token (strata's `strata token create`): sent as a Bearer
    /// token, and as Basic to a token endpoint.
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user, .. } => write!(f, "Basic({user}:…)"),
            Credential::Token(_) => write!(f, "Token(…)"),
        }
    }
}

impl Credential {
    /// `NAME:SECRET` → Basic; anything else → a bare token.
    pub fn parse(s: &str) -> Credential {
        match s.split_once(':') {
            Some((u, p)) => Credential::Basic {
                user: u.to_string(),
                secret: p.to_string(),
            },
            None => Credential::Token(s.to_string()),
        }
    }

    fn basic(&self) -> String {
        let (u, p) = match self {
            Credential::Basic { user, secret } => (user.as_str(), secret.as_str()),
            Credential::Token(t) => ("strata", t.as_str()),
        };
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn direct(&self) -> String {
        match self {
            Credential::Basic { .. } => self.basic(),
            Credential::Token(t) => format!("Bearer {t}"),
        }
    }
}

enum Scheme {
    /// Nothing learnt yet: send the credential as it is, if any.
    Unknown,
    Basic,
    Bearer {
        realm: String,
        /// Scope list → token.
        tokens: HashMap<String, String>,
    },
}

pub struct Auth {
    credential: Option<Credential>,
    scheme: Mutex<Scheme>,
}

impl Auth {
    pub fn new(credential: Option<Credential>) -> Auth {
        Auth {
            credential,
            scheme: Mutex::new(Scheme::Unknown),
        }
    }

    /// The `Authorization` value for a request needing `scopes`, if any.
    pub fn header(&self, scopes: &[String]) -> Option<String> {
        let scheme = self.scheme.lock().unwrap_or_else(|e| e.into_inner());
        match &*scheme {
            Scheme::Unknown | Scheme::Basic => self.credential.as_ref().map(Credential::direct),
            Scheme::Bearer { tokens, .. } => tokens.get(&scopes.join(" ")).map(|t| format!("Bearer {t}")),
        }
    }

    /// Learns from a 401's `WWW-Authenticate` and fetches a token when the
    /// registry asks for one. Err: why the challenge cannot be answered.
    pub fn answer(&self, http: &Http, challenge: &str, scopes: &[String]) -> Result<(), String> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.credential.is_none() {
                    return Err("the registry wants a user name and password".into());
                }
                *self.scheme.lock().unwrap_or_else(|e| e.into_inner()) = Scheme::Basic;
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .cloned()
                    .ok_or("the registry's Bearer challenge names no realm")?;
                let service = params.get("service").cloned();
                let token = self.fetch_token(http, &realm, service.as_deref(), scopes)?;
                let mut guard = self.scheme.lock().unwrap_or_else(|e| e.into_inner());
                if !matches!(&*guard, Scheme::Bearer { realm: r, .. } if *r == realm) {
                    *guard = Scheme::Bearer {
                        realm,
                        tokens: HashMap::new(),
                    };
                }
                if let Scheme::Bearer { tokens, .. } = &mut *guard {
                    tokens.insert(scopes.join(" "), token);
                }
                Ok(())
            }
            "" => Err("the registry sent 401 without a WWW-Authenticate challenge".into()),
            other => Err(format!(
                "the registry asks for `{other}` auth, which strata does not speak"
            )),
        }
    }

    fn fetch_token(
        &self,
        http: &Http,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String, String> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let url = reqwest::Url::parse_with_params(realm, &query)
            .map_err(|e| format!("the registry's token realm `{realm}` is not a URL: {e}"))?;
        let mut req = http.get(url);
        if let Some(c) = &self.credential {
            req = req.header(reqwest::header::AUTHORIZATION, c.basic());
        }
        let r = req.send().map_err(|e| format!("token endpoint {realm}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("token endpoint {realm} answered {}", r.status()));
        }
        let body = r.bytes().map_err(|e| format!("token endpoint {realm}: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("token endpoint {realm}: {e}"))?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("token endpoint {realm} sent no token"))
    }
}

/// `Scheme k="v",k2="v, with comma"` → (scheme, params).
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="strata""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "strata");
        assert!(parse_challenge("").1.is_empty());
    }

    #[test]
    fn credentials() {
        assert!(
            matches!(Credential::parse("jenkins:s3cr:et"), Credential::Basic { user, secret } if user == "jenkins" && secret == "s3cr:et")
        );
        assert_eq!(Credential::parse("tok").direct(), "Bearer tok");
        assert!(format!("{:?}", Credential::parse("a:b")).contains("…"));
    }
}
