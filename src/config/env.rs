//! The environment's part in a configuration: `${VAR}` references in the file, and
//! `BEARERD_CONFIG__<ID>__<FIELD>` variables that define or override fields.

use std::collections::BTreeMap;

use serde_yaml::Value;

/// The environment as configuration sees it: a snapshot, so tests never touch the real one.
pub type Env = BTreeMap<String, String>;

pub(super) const ENV_CONFIG_PREFIX: &str = "BEARERD_CONFIG__";

/// Maps `FIELD` of `BEARERD_CONFIG__<ID>__<FIELD>` to (top-level key, nested key, value).
pub(super) fn env_field(field: &str, value: &str) -> (String, Option<String>, Value) {
    let lower = field.to_ascii_lowercase();
    let string = || Value::String(value.to_owned());
    match lower.as_str() {
        "allowed_hosts" => (
            lower,
            None,
            Value::Sequence(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| Value::String(h.to_owned()))
                    .collect(),
            ),
        ),
        "inject_header" => ("inject".into(), Some("header".into()), string()),
        "inject_prefix" => ("inject".into(), Some("prefix".into()), string()),
        "inject_query" => ("inject".into(), Some("query".into()), string()),
        "backoff_initial" => ("backoff".into(), Some("initial".into()), string()),
        "backoff_max" => ("backoff".into(), Some("max".into()), string()),
        "retry_on_401" | "prefetch" => (
            lower,
            None,
            value.parse::<bool>().map_or_else(|_| string(), Value::Bool),
        ),
        _ => match (
            lower.strip_prefix("extra_params__"),
            lower.strip_prefix("authorize_params__"),
        ) {
            (Some(param), _) => ("extra_params".into(), Some(param.to_owned()), string()),
            (_, Some(param)) => ("authorize_params".into(), Some(param.to_owned()), string()),
            (None, None) => (lower, None, string()),
        },
    }
}

/// `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
pub(super) fn expand_vars(text: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| "unterminated ${ in value".to_owned())?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("`${{{expr}}}` is not a variable reference"));
            }
            match (env.get(name), default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
