//! `kivihook webhooks list | get | create | apply | export | import`.

use serde_json::Value;

use kivihook_core::definitions::{self, Definition, Format, Reading};
use kivihook_core::webhook::{Auth, Webhook, WebhookSpec};

use super::apply::{self, Options};
use super::client::Api;
use super::error::CliError;
use super::output::{self, Output};
use super::{read_input, shown, WebhooksAction};

/// `export -o yaml | json`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    Yaml,
    Json,
}

/// The fields shown first when a webhook is printed as text.
const SHOWN_FIRST: &[&str] = &[
    "id",
    "name",
    "url",
    "method",
    "events",
    "clinic_ids",
    "enabled",
    "disabled_reason",
    "secret",
];

pub async fn run(api: &Api, action: WebhooksAction) -> Result<(), CliError> {
    match action {
        WebhooksAction::List { output } => list(api, output).await,
        WebhooksAction::Get {
            id,
            show_secret,
            output,
        } => get(api, &id, show_secret, output).await,
        WebhooksAction::Create { file, output } => {
            let text = read_input(&file)?;
            let definition: Value = yaml_serde::from_str(&text).map_err(|e| {
                CliError::InvalidFile(format!("{}: is not valid YAML or JSON ({e})", shown(&file)))
            })?;
            if !definition.is_object() {
                return Err(CliError::InvalidFile(format!(
                    "{}: must be one webhook definition (a mapping of its fields); `webhooks apply` takes a list",
                    shown(&file)
                )));
            }
            create(api, &definition, output).await
        }
        WebhooksAction::Apply {
            file,
            dry_run,
            prune: _,
            no_prune,
        } => {
            let wanted = parse_file(&file, Reading::Declaration)?;
            apply::run(
                api,
                &wanted,
                Options {
                    prune: !no_prune,
                    dry_run,
                },
            )
            .await
        }
        WebhooksAction::Import { file, dry_run } => {
            let wanted = parse_file(&file, Reading::Backup)?;
            apply::run(
                api,
                &wanted,
                Options {
                    prune: false,
                    dry_run,
                },
            )
            .await
        }
        WebhooksAction::Export { output, no_secrets } => export(api, output, no_secrets).await,
    }
}

fn parse_file(file: &std::path::Path, reading: Reading) -> Result<Vec<Definition>, CliError> {
    let text = read_input(file)?;
    definitions::parse(&text, reading)
        .map_err(|e| CliError::InvalidFile(format!("{}: {e}; nothing was changed", shown(file))))
}

/// Webhooks asked for per page: the most the API gives at once.
const PAGE: &str = "1000";

/// Every webhook, as the API shows them (secrets and credentials masked): page after page
/// until the API gives no `next_cursor` (a server older than paging gives none at all).
pub async fn fetch_all(api: &Api) -> Result<Vec<Value>, CliError> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", PAGE)];
        if let Some(c) = &cursor {
            query.push(("cursor", c.as_str()));
        }
        let answer = api.get(&["v1", "webhooks"], &query).await?;
        match answer.get("webhooks") {
            Some(Value::Array(items)) => all.extend(items.iter().cloned()),
            _ => return Err(CliError::Io(
                "the API's webhook list has no `webhooks` array; is KIVIHOOK_API_URL the KiviHook API?"
                    .into(),
            )),
        }
        match answer.get("next_cursor").and_then(Value::as_str) {
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// A webhook as the API shows it, read back into the model.
pub fn parse_webhook(value: &Value) -> Result<Webhook, CliError> {
    serde_json::from_value(value.clone()).map_err(|e| {
        CliError::Io(format!(
            "the API sent a webhook this client cannot read ({e}); are the CLI and the server the same version?"
        ))
    })
}

/// What every answer but one masks: the signing secret, the endpoint credential, and the
/// URL and headers in full.
pub struct Secrets {
    pub secret: String,
    pub auth: Auth,
    pub url: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// A webhook's secrets, in full (`GET /v1/webhooks/{id}/secret`).
pub async fn secrets(api: &Api, id: &str) -> Result<Secrets, CliError> {
    let answer = api.get(&["v1", "webhooks", id, "secret"], &[]).await?;
    let secret = answer["secret"].as_str().map(str::to_owned);
    let auth = serde_json::from_value::<Auth>(answer["auth"].clone());
    match (secret, auth) {
        (Some(secret), Ok(auth)) => Ok(Secrets {
            secret,
            auth,
            url: answer["url"].as_str().map(str::to_owned),
            headers: serde_json::from_value(answer["headers"].clone()).ok(),
        }),
        _ => Err(CliError::Io(format!(
            "the API's answer for the secret of {id} lacks `secret` or `auth`; is the server older than this CLI?"
        ))),
    }
}

async fn list(api: &Api, output: Output) -> Result<(), CliError> {
    let mut items = fetch_all(api).await?;
    items.sort_by(|a, b| {
        (a["name"].as_str(), a["id"].as_str()).cmp(&(b["name"].as_str(), b["id"].as_str()))
    });
    if output == Output::Json {
        return output::json(&serde_json::json!({ "webhooks": items }));
    }
    if items.is_empty() {
        return output::print("no webhooks\n");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|w| {
            let enabled = match (w["enabled"].as_bool(), w["disabled_reason"].as_str()) {
                (Some(true), _) => "yes".to_owned(),
                (_, Some(reason)) => format!("no ({reason})"),
                _ => "no".to_owned(),
            };
            vec![
                output::text(&w["id"]),
                output::text(&w["name"]),
                enabled,
                output::text(&w["events"]),
                output::text(&w["url"]),
            ]
        })
        .collect();
    output::print(&output::table(
        &["ID", "NAME", "ENABLED", "EVENTS", "URL"],
        &rows,
    ))
}

async fn get(api: &Api, id: &str, show_secret: bool, output: Output) -> Result<(), CliError> {
    let mut webhook = api.get(&["v1", "webhooks", id], &[]).await?;
    if show_secret {
        let s = secrets(api, id).await?;
        webhook["secret"] = Value::String(s.secret);
        webhook["auth"] = serde_json::to_value(s.auth).unwrap_or(Value::Null);
        if let Some(url) = s.url {
            webhook["url"] = Value::String(url);
        }
        if let Some(headers) = s.headers {
            webhook["headers"] = serde_json::to_value(headers).unwrap_or(Value::Null);
        }
    }
    match output {
        Output::Json => output::json(&webhook),
        Output::Text => output::print(&output::record(&webhook, SHOWN_FIRST)),
    }
}

async fn create(api: &Api, definition: &Value, output: Output) -> Result<(), CliError> {
    let (_, created) = api.post(&["v1", "webhooks"], Some(definition)).await?;
    match output {
        Output::Json => output::json(&created),
        Output::Text => {
            output::print(&output::record(&created, SHOWN_FIRST))?;
            eprintln!("The signing secret is shown only this once: store it now.");
            Ok(())
        }
    }
}

async fn export(api: &Api, format: FileFormat, no_secrets: bool) -> Result<(), CliError> {
    let items = fetch_all(api).await?;
    let mut exported = Vec::with_capacity(items.len());
    for item in &items {
        let mut webhook = parse_webhook(item)?;
        let secret = if no_secrets {
            None
        } else {
            let s = secrets(api, &webhook.id)
                .await
                .map_err(|e| e.during(format!("exporting `{}` ({})", webhook.name, webhook.id)))?;
            webhook.auth = s.auth;
            if let Some(url) = s.url {
                webhook.url = url;
            }
            if let Some(headers) = s.headers {
                webhook.headers = headers;
            }
            Some(s.secret)
        };
        exported.push(Definition {
            spec: WebhookSpec::of(&webhook),
            secret,
        });
    }
    exported.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    for pair in exported.windows(2) {
        if pair[0].spec.name == pair[1].spec.name {
            eprintln!(
                "warning: several webhooks are named `{}`; apply and import match by name, so rename all but one before restoring this file",
                pair[0].spec.name
            );
        }
    }
    let format = match format {
        FileFormat::Yaml => Format::Yaml,
        FileFormat::Json => Format::Json,
    };
    let text = definitions::render(&exported, format)
        .map_err(|e| CliError::Io(format!("cannot write the export: {e}")))?;
    output::print(&text)?;
    eprintln!(
        "exported {} webhooks{}",
        exported.len(),
        if no_secrets {
            " (signing secrets left out, credentials masked)"
        } else {
            " (signing secrets and credentials included: store this like a secret)"
        }
    );
    Ok(())
}
