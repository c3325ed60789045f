//! `FLOQ_PLUGINS` and `FLOQ_PLUGIN_<NAME>_<SETTING>`: read with the rest of
//! the configuration, handed to each plugin's factory as its [`Settings`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::config::ConfigError;

const PREFIX: &str = "FLOQ_PLUGIN_";

/// Every enabled plugin's settings, by plugin name then setting name.
#[derive(Clone, Default)]
pub struct PluginSettings(BTreeMap<String, BTreeMap<String, String>>);

/// The variable prefix of a plugin's settings: `node-policy` → `FLOQ_PLUGIN_NODE_POLICY_`.
pub fn prefix_of(name: &str) -> String {
    format!("{PREFIX}{}_", name.to_ascii_uppercase().replace('-', "_"))
}

/// The names in `FLOQ_PLUGINS`, checked.
pub fn enabled(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for name in raw.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let well_formed = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !well_formed {
            return Err(ConfigError {
                var: "FLOQ_PLUGINS",
                problem: format!("`{name}` is not a plugin name (lowercase letters, digits and `-`)"),
            });
        }
        if names.iter().any(|n| n == name) {
            return Err(ConfigError {
                var: "FLOQ_PLUGINS",
                problem: format!("`{name}` is listed twice"),
            });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

impl PluginSettings {
    /// Sorts every `FLOQ_PLUGIN_*` variable to the enabled plugin it names
    /// (the longest matching prefix); one that names no enabled plugin is an
    /// error, so a typo cannot leave a plugin silently unconfigured.
    pub fn from_vars(vars: &HashMap<String, String>, enabled: &[String]) -> Result<Self, ConfigError> {
        let mut prefixes: Vec<(String, &String)> = enabled.iter().map(|n| (prefix_of(n), n)).collect();
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut settings: BTreeMap<String, BTreeMap<String, String>> =
            enabled.iter().map(|n| (n.clone(), BTreeMap::new())).collect();
        let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(PREFIX)).collect();
        names.sort();
        for var in names {
            let value = vars[var].trim();
            let Some((prefix, plugin)) = prefixes.iter().find(|(p, _)| var.starts_with(p.as_str())) else {
                return Err(ConfigError {
                    var: leak(var),
                    problem: if enabled.is_empty() {
                        "names a plugin, but FLOQ_PLUGINS enables none".into()
                    } else {
                        format!("names no plugin in FLOQ_PLUGINS ({})", enabled.join(", "))
                    },
                });
            };
            let key = &var[prefix.len()..];
            if key.is_empty() {
                return Err(ConfigError {
                    var: leak(var),
                    problem: "names no setting".into(),
                });
            }
            if !value.is_empty() {
                settings
                    .get_mut(plugin.as_str())
                    .expect("every enabled plugin has an entry")
                    .insert(key.to_string(), value.to_string());
            }
        }
        Ok(Self(settings))
    }

    /// One plugin's settings.
    pub fn of(&self, plugin: &str) -> Settings {
        Settings {
            prefix: prefix_of(plugin),
            values: self.0.get(plugin).cloned().unwrap_or_default(),
        }
    }
}

/// A setting that might hold a credential is shown masked by `config check`.
fn secret_looking(key: &str) -> bool {
    [
        "SECRET",
        "KEY",
        "TOKEN",
        "PASSWORD",
        "PASS",
        "DSN",
        "URL",
        "CREDENTIAL",
        "AUTH",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl fmt::Debug for PluginSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (plugin, values) in &self.0 {
            for (key, value) in values {
                let shown = if secret_looking(key) { "***" } else { value.as_str() };
                map.entry(&format!("{}{key}", prefix_of(plugin)), &shown);
            }
        }
        map.finish()
    }
}

/// The settings of one plugin, as its factory reads them.
pub struct Settings {
    prefix: String,
    values: BTreeMap<String, String>,
}

impl Settings {
    /// Settings given in code (a test's, or a binary that configures its plugin itself).
    pub fn from_pairs(plugin: &str, pairs: &[(&str, &str)]) -> Self {
        Self {
            prefix: prefix_of(plugin),
            values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// The value of `key` (`DENY` for `FLOQ_PLUGIN_NODE_POLICY_DENY`), if set and not blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A comma-separated setting, entries trimmed, blanks dropped.
    pub fn list(&self, key: &str) -> Vec<&str> {
        self.get(key)
            .map(|raw| raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// The full variable name of `key`.
    pub fn var(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A bad value of `key`, as the error that stops start-up.
    pub fn error(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            var: leak(&self.var(key)),
            problem: problem.into(),
        }
    }

    pub(super) fn refuse_unknown(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => Err(self.error(
                key,
                if known.is_empty() {
                    "this plugin reads no settings".to_string()
                } else {
                    format!("not a setting of this plugin (it reads: {})", known.join(", "))
                },
            )),
        }
    }
}

/// Configuration errors name their variable as `&'static str`; a plugin's
/// variables are known only at start, and an error stops the process.
fn leak(var: &str) -> &'static str {
    Box::leak(var.to_string().into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn settings_go_to_the_plugin_their_prefix_names() {
        let enabled = enabled(Some("node-policy, node")).unwrap();
        let s = PluginSettings::from_vars(
            &vars(&[
                ("FLOQ_PLUGIN_NODE_POLICY_DENY", "code"),
                ("FLOQ_PLUGIN_NODE_X", "1"),
                ("FLOQ_PLUGINS", "ignored here"),
            ]),
            &enabled,
        )
        .unwrap();
        assert_eq!(s.of("node-policy").get("DENY"), Some("code"));
        assert_eq!(s.of("node").get("X"), Some("1"));
        assert_eq!(s.of("node").get("POLICY_DENY"), None);
    }

    #[test]
    fn a_setting_of_no_enabled_plugin_and_bad_names_are_refused() {
        let e =
            PluginSettings::from_vars(&vars(&[("FLOQ_PLUGIN_TYPO_X", "1")]), &enabled(Some("a")).unwrap()).unwrap_err();
        assert_eq!(e.var, "FLOQ_PLUGIN_TYPO_X");
        assert!(enabled(Some("Bad_Name")).is_err());
        assert!(enabled(Some("a,a")).is_err());
        assert_eq!(enabled(None).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unknown_settings_are_named_and_secrets_masked() {
        let s = Settings::from_pairs("p", &[("NOPE", "1")]);
        assert_eq!(s.refuse_unknown(&["DENY"]).unwrap_err().var, "FLOQ_PLUGIN_P_NOPE");
        let all = PluginSettings(BTreeMap::from([(
            "p".to_string(),
            BTreeMap::from([("SIGNING_KEY".to_string(), "hunter2".to_string())]),
        )]));
        assert!(!format!("{all:?}").contains("hunter2"));
    }
}
