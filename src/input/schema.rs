//! `image-sync config-schema`: the config's JSON Schema (draft 2020-12), generated from the
//! very types the config is read into ([`crate::input::config`]; doc comments become
//! descriptions, `deny_unknown_fields` becomes `additionalProperties: false`), plus the
//! bounds and patterns the plan enforces ([`crate::input::plan`]), so that an editor or a CI
//! step can check a config before image-sync reads it. The plan stays the authority: a test
//! below checks that each bound stated here is the one the plan applies.

use serde_json::{Value, json};

use crate::input::config::RawConfig;
use crate::input::plan::{MAX_CHECK_CONCURRENCY, MAX_CONCURRENCY, MAX_RETRIES, MAX_TIMEOUT_SECS};
use crate::input::tag_rules::MAX_PAGE_SIZE;

/// Where the schema is published; example files name it in their
/// `# yaml-language-server: $schema=...` line.
pub const SCHEMA_ID: &str =
    "https://raw.githubusercontent.com/pleme-io/image-sync/main/docs/config.schema.json";

/// `settings` fields with a range: (field, minimum, maximum), as the plan checks them.
pub const SETTING_BOUNDS: [(&str, u64, u64); 7] = [
    ("concurrency", 1, MAX_CONCURRENCY),
    ("check_concurrency", 1, MAX_CHECK_CONCURRENCY),
    ("retries", 0, MAX_RETRIES),
    ("tag_page_size", 1, MAX_PAGE_SIZE),
    ("run_deadline_secs", 1, MAX_TIMEOUT_SECS),
    ("pull_timeout_secs", 1, MAX_TIMEOUT_SECS),
    ("check_timeout_secs", 1, MAX_TIMEOUT_SECS),
];

/// A tag (`images[].tag`), or empty when `tags` selects them: the distribution grammar.
const TAG_PATTERN: &str = "^([A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$";
/// A digest pin (`images[].digest`).
const DIGEST_PATTERN: &str = "^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";

/// The schema as a JSON value (print it with `serde_json::to_string_pretty`).
pub fn config_schema() -> Value {
    let mut schema = schemars::schema_for!(RawConfig).to_value();
    schema["$id"] = json!(SCHEMA_ID);
    schema["title"] = json!("image-sync config");
    let defs = &mut schema["$defs"];
    let settings = &mut defs["Settings"]["properties"];
    for (field, minimum, maximum) in SETTING_BOUNDS {
        settings[field]["minimum"] = json!(minimum);
        settings[field]["maximum"] = json!(maximum);
    }
    let image = &mut defs["Image"];
    image["properties"]["tag"]["pattern"] = json!(TAG_PATTERN);
    image["properties"]["digest"]["pattern"] = json!(DIGEST_PATTERN);
    // `tag` defaults to empty for serde's sake; the plan wants one of the two.
    image["anyOf"] = json!([{ "required": ["tag"] }, { "required": ["tags"] }]);
    schema["properties"]["images"]["minItems"] = json!(1);
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{config, plan};
    use std::path::Path;

    fn resolves(settings: &str) -> Result<(), String> {
        let text = format!(
            "cache_registry: cache:5000\nimages:\n  - source: nginx\n    tag: \"1\"\nsettings:\n{settings}"
        );
        let raw = config::parse(text.as_bytes())?;
        plan::resolve(raw, Path::new("config.yaml"))
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    #[test]
    fn every_bound_in_the_schema_is_the_one_the_plan_applies() {
        for (field, minimum, maximum) in SETTING_BOUNDS {
            // check_timeout_secs may not exceed pull_timeout_secs: lift the latter.
            let extra = if field == "check_timeout_secs" {
                format!("  pull_timeout_secs: {MAX_TIMEOUT_SECS}\n")
            } else {
                String::new()
            };
            let at = |value: u64| resolves(&format!("{extra}  {field}: {value}\n"));
            assert!(
                at(minimum).is_ok(),
                "{field} = {minimum}: {:?}",
                at(minimum)
            );
            assert!(
                at(maximum).is_ok(),
                "{field} = {maximum}: {:?}",
                at(maximum)
            );
            assert!(at(maximum + 1).is_err(), "{field} above {maximum}");
            if minimum > 0 {
                assert!(at(minimum - 1).is_err(), "{field} below {minimum}");
            }
        }
    }

    #[test]
    fn the_schema_names_every_field_and_refuses_unknown_keys() {
        let schema = config_schema();
        assert_eq!(
            schema["$schema"],
            json!("https://json-schema.org/draft/2020-12/schema")
        );
        assert_eq!(schema["additionalProperties"], json!(false));
        for def in ["Image", "Settings", "TagRules"] {
            assert_eq!(
                schema["$defs"][def]["additionalProperties"],
                json!(false),
                "{def}"
            );
        }
        let settings = &schema["$defs"]["Settings"]["properties"];
        assert!(
            settings["concurrency"]["description"]
                .as_str()
                .is_some_and(|text| text.contains("Copies at once")),
            "doc comments are descriptions: {settings}"
        );
        assert_eq!(
            settings["digest_check"]["anyOf"][0]["$ref"],
            json!("#/$defs/DigestCheck"),
            "{settings}"
        );
    }

    #[test]
    fn the_published_copy_is_the_generated_schema() {
        let published: Value = serde_json::from_str(include_str!("../../docs/config.schema.json"))
            .expect("docs/config.schema.json is JSON");
        assert_eq!(
            published,
            config_schema(),
            "docs/config.schema.json is stale: run `cargo run -- config-schema > docs/config.schema.json`"
        );
    }
}
