//! A small blocking client of etcd's v3 JSON gateway (`/v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/*`), shared by the lease store
//! ([`crate::lease`]) and the deploy state ([`crate::deploy::state`]).
//!
//! It speaks HTTP/JSON so no gRPC stack is needed: keys and values travel
//! base64-encoded, 64-bit numbers as strings. Each call goes to the first
//! endpoint that answers. It never retries a transaction by itself: a
//! failed compare is the caller's to handle.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// A call that no endpoint answered, or answered with nonsense.
#[derive(Debug, thiserror::Error)]
#[error("etcd at {endpoint}: {why}")]
pub struct EtcdError {
    pub endpoint: String,
    pub why: String,
}

pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// One key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    /// The revision of the last write to this key.
    pub mod_revision: i64,
}

/// The endpoints of an `etcd://HOST:PORT[,HOST:PORT…]` spec, as URLs;
/// None when `spec` is not one.
pub fn endpoints_of(spec: &str) -> Option<Vec<String>> {
    let rest = spec.strip_prefix("etcd://")?;
    let eps: Vec<String> = rest
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| format!("http://{e}"))
        .collect();
    (!eps.is_empty()).then_some(eps)
}

#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: reqwest::blocking::Client,
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn unb64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The key just after every key starting with `prefix`.
pub fn range_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A proto3 JSON int64: a string, or (from some gateways) a number.
fn int(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Result<Etcd> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| EtcdError {
                endpoint: endpoints.join(","),
                why: e.to_string(),
            })?;
        Ok(Etcd { endpoints, http })
    }

    /// `etcd://A,B` as the user wrote it.
    pub fn describe(&self) -> String {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    pub fn error(&self, why: impl Into<String>) -> EtcdError {
        EtcdError {
            endpoint: self.endpoints.join(","),
            why: why.into(),
        }
    }

    /// POSTs to the first endpoint that answers.
    pub fn call(&self, path: &str, body: Value) -> Result<Value> {
        let mut last = String::new();
        for e in &self.endpoints {
            match self.http.post(format!("{e}{path}")).body(body.to_string()).send() {
                Ok(r) if r.status().is_success() => {
                    let bytes = r.bytes().map_err(|x| EtcdError {
                        endpoint: e.clone(),
                        why: x.to_string(),
                    })?;
                    return serde_json::from_slice(&bytes).map_err(|x| EtcdError {
                        endpoint: e.clone(),
                        why: x.to_string(),
                    });
                }
                Ok(r) => last = format!("{e}: answered {}", r.status()),
                Err(x) => last = format!("{e}: {x}"),
            }
        }
        Err(self.error(last))
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.get_kv(key)?.map(|kv| kv.value))
    }

    /// `key` with its revision, if it exists.
    pub fn get_kv(&self, key: &str) -> Result<Option<Kv>> {
        let v = self.call("/v3/kv/range", json!({ "key": b64(key) }))?;
        Ok(kvs(&v).into_iter().next())
    }

    /// Every key starting with `prefix`, in key order.
    pub fn prefix(&self, prefix: &str) -> Result<Vec<Kv>> {
        let v = self.call(
            "/v3/kv/range",
            json!({ "key": b64(prefix), "range_end": b64(&range_end(prefix)) }),
        )?;
        Ok(kvs(&v))
    }

    /// The keys (no values) starting with `prefix`, in key order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let v = self.call(
            "/v3/kv/range",
            json!({ "key": b64(prefix), "range_end": b64(&range_end(prefix)), "keys_only": true }),
        )?;
        Ok(kvs(&v).into_iter().map(|kv| kv.key).collect())
    }

    /// Runs a transaction; `Some(revision)` when its compares held (the
    /// revision the transaction wrote at), None when they did not.
    pub fn txn(&self, compare: Vec<Value>, success: Vec<Value>, failure: Vec<Value>) -> Result<Option<i64>> {
        let v = self.call(
            "/v3/kv/txn",
            json!({ "compare": compare, "success": success, "failure": failure }),
        )?;
        // proto3 JSON leaves out `false`.
        Ok((v["succeeded"].as_bool() == Some(true)).then(|| int(&v["header"]["revision"])))
    }
}

/// Compare: `key` was last written at `revision` (0: it does not exist).
pub fn mod_is(key: &str, revision: i64) -> Value {
    json!({ "key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision.to_string() })
}

/// Compare: `key` does not exist.
pub fn absent(key: &str) -> Value {
    json!({ "key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0" })
}

/// Compare: `key` holds `value`.
pub fn value_is(key: &str, value: &str) -> Value {
    json!({ "key": b64(key), "result": "EQUAL", "target": "VALUE", "value": b64(value) })
}

/// Request: put `value` at `key`.
pub fn put(key: &str, value: &str) -> Value {
    json!({ "request_put": { "key": b64(key), "value": b64(value) } })
}

/// Request: put `value` at `key`, attached to etcd lease `lease`.
pub fn put_leased(key: &str, value: &str, lease: &str) -> Value {
    json!({ "request_put": { "key": b64(key), "value": b64(value), "lease": lease } })
}

/// Request: delete `key`.
pub fn delete(key: &str) -> Value {
    json!({ "request_delete_range": { "key": b64(key) } })
}

fn kvs(v: &Value) -> Vec<Kv> {
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| Kv {
            key: unb64(kv["key"].as_str().unwrap_or("")),
            value: unb64(kv["value"].as_str().unwrap_or("")),
            mod_revision: int(&kv["mod_revision"]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_keys_and_numbers() {
        assert_eq!(
            endpoints_of("etcd://a:1,b:2"),
            Some(vec!["http://a:1".to_string(), "http://b:2".to_string()])
        );
        assert_eq!(endpoints_of("file"), None);
        assert_eq!(endpoints_of("etcd://"), None);
        assert_eq!(range_end("a/b/"), "a/b0");
        assert_eq!(unb64(&b64("strata/apps/x")), "strata/apps/x");
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
        let e = Etcd::new(vec!["http://127.0.0.1:1".into()]).unwrap();
        assert_eq!(e.describe(), "etcd://127.0.0.1:1");
    }
}
