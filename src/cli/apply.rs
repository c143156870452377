//! Make the registry match a set of definitions, by name: `webhooks apply` (which also
//! deletes webhooks the file does not name) and `webhooks import` (which never deletes).
//!
//! Everything is planned before anything changes: the registry is read once, every entry is
//! compared with its webhook, and only then are the changes made, creates and updates
//! before deletes, so that a failure half-way never leaves fewer webhooks than before.
//! Comparing parsed definitions (not the file's text) means that aliases, numeric clinic ids
//! or a missing default do not count as changes, so applying the same file twice changes
//! nothing the second time.
//!
//! A dry run sends each create and update the plan holds with `?dry_run=true`: the API runs
//! every check the real change would meet (fields, templates, the outbound policy, the
//! unique name) and stores nothing, so the plan says "would create" only for what the real
//! apply would create, and reports each refusal as the API words it.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use kivihook_core::definitions::Definition;
use kivihook_core::webhook::{Webhook, WebhookSpec, FIELDS};

use super::client::Api;
use super::error::CliError;
use super::output;
use super::webhooks::{fetch_all, parse_webhook, secrets};

/// How far to go.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Delete webhooks that no definition names.
    pub prune: bool,
    /// Print the plan only.
    pub dry_run: bool,
}

/// One change the plan makes.
enum Change<'a> {
    Create {
        index: usize,
        definition: &'a Definition,
    },
    Update {
        index: usize,
        name: &'a str,
        id: String,
        /// The fields that differ (and `secret` when it does), in the order of `FIELDS`.
        fields: Vec<&'static str>,
        patch: Value,
    },
    Delete {
        name: String,
        id: String,
    },
}

/// How an entry is named in messages: as the file parser names it.
fn entry(index: usize, name: &str) -> String {
    format!("webhooks[{index}] (webhook `{name}`)")
}

/// A credential as `webhooks export --no-secrets` writes it (and the API shows it).
fn is_masked(credential: &str) -> bool {
    credential.starts_with('…')
}

pub async fn run(api: &Api, wanted: &[Definition], options: Options) -> Result<(), CliError> {
    let existing = fetch_all(api)
        .await?
        .iter()
        .map(parse_webhook)
        .collect::<Result<Vec<Webhook>, _>>()?;
    let plan = plan(api, wanted, &existing, options.prune).await?;
    let unchanged = wanted.len()
        - plan
            .iter()
            .filter(|c| !matches!(c, Change::Delete { .. }))
            .count();
    if options.dry_run {
        return dry_run(api, &plan, unchanged).await;
    }
    let mut counts = [0usize; 3];
    for change in &plan {
        let id = make(api, change).await?;
        counts[kind(change)] += 1;
        output::print(&format!("{}\n", describe(change, Some(&id))))?;
    }
    output::print(&format!("{}\n", summary(counts, unchanged)))
}

/// Which of created, updated, deleted a change counts as.
fn kind(change: &Change<'_>) -> usize {
    match change {
        Change::Create { .. } => 0,
        Change::Update { .. } => 1,
        Change::Delete { .. } => 2,
    }
}

fn summary([created, updated, deleted]: [usize; 3], unchanged: usize) -> String {
    format!("created {created}, updated {updated}, deleted {deleted}, unchanged {unchanged}")
}

/// Print the plan, each create and update checked by the API and nothing changed. A change
/// the API would refuse is printed with the refusal instead of "would …", and the first
/// refusal is the error (with the exit code the real apply would end with on it).
async fn dry_run(api: &Api, plan: &[Change<'_>], unchanged: usize) -> Result<(), CliError> {
    if plan.iter().any(|c| !matches!(c, Change::Delete { .. })) {
        ensure_dry_run_is_checked(api).await?;
    }
    let mut counts = [0usize; 3];
    let mut refused: Vec<CliError> = Vec::new();
    for change in plan {
        let line = match check(api, change).await {
            Ok(()) => {
                counts[kind(change)] += 1;
                describe(change, None)
            }
            // A refusal of this change; anything else (the API away, a 5xx) ends the plan.
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                let line = describe_refusal(change, &e);
                refused.push(match change {
                    Change::Create { index, definition } => {
                        e.during(entry(*index, &definition.spec.name))
                    }
                    Change::Update { index, name, .. } => e.during(entry(*index, name)),
                    Change::Delete { name, id } => e.during(format!("deleting `{name}` ({id})")),
                });
                line
            }
            Err(e) => return Err(e),
        };
        output::print(&format!("{line}\n"))?;
    }
    let summary = summary(counts, unchanged);
    if refused.is_empty() {
        return output::print(&format!("dry run, nothing changed: would have {summary}\n"));
    }
    let n = refused.len();
    output::print(&format!(
        "dry run, nothing changed: {n} planned change{} would be refused, and apply stops at the first; the rest would have {summary}\n",
        if n == 1 { "" } else { "s" }
    ))?;
    Err(refused.remove(0))
}

/// Ask the API whether it would make this change (`?dry_run=true`); it stores nothing.
/// A delete is not asked about: it meets no check.
async fn check(api: &Api, change: &Change<'_>) -> Result<(), CliError> {
    let answer = match change {
        Change::Create { definition, .. } => {
            api.post_with(
                &["v1", "webhooks"],
                &[("dry_run", "true")],
                Some(&create_body(definition)),
            )
            .await?
            .1
        }
        Change::Update { id, patch, .. } => {
            api.patch_with(&["v1", "webhooks", id], &[("dry_run", "true")], patch)
                .await?
        }
        Change::Delete { .. } => return Ok(()),
    };
    if answer["dry_run"] != Value::Bool(true) {
        return Err(CliError::Unsupported(format!(
            "the API answered a dry run without `\"dry_run\": true`, so it may have made the change: {answer}"
        )));
    }
    Ok(())
}

/// An ingest that predates `?dry_run=` would make a change sent with it for real. Ask
/// first with a value only a checking API refuses by name (`dry_run`), and an empty body
/// that any API refuses: either way nothing is stored.
async fn ensure_dry_run_is_checked(api: &Api) -> Result<(), CliError> {
    let probe = api
        .post_with(
            &["v1", "webhooks"],
            &[("dry_run", "probe")],
            Some(&Value::Object(Map::new())),
        )
        .await;
    match probe {
        Err(CliError::Api {
            status: 422, field, ..
        }) if field.as_deref() == Some("dry_run") => Ok(()),
        Err(e) if !e.status().is_some_and(|s| (400..500).contains(&s)) => Err(e),
        _ => Err(CliError::Unsupported(
            "the API does not check dry runs (its ingest predates `?dry_run=`), so a plan could promise changes it would refuse; upgrade ingest, or apply without --dry-run; nothing was changed".into(),
        )),
    }
}

/// A plan line for a change the API would refuse: never "would …".
fn describe_refusal(change: &Change<'_>, refusal: &CliError) -> String {
    match change {
        Change::Create { definition, .. } => {
            format!("cannot create {}: {refusal}", definition.spec.name)
        }
        Change::Update {
            name, id, fields, ..
        } => format!(
            "cannot update {name} ({id}): {}: {refusal}",
            fields.join(", ")
        ),
        Change::Delete { name, id } => format!("cannot delete {name} ({id}): {refusal}"),
    }
}

/// The body that creates a definition's webhook.
fn create_body(definition: &Definition) -> Value {
    let mut body = definition.spec.to_json();
    if let Some(secret) = &definition.secret {
        body["secret"] = Value::String(secret.clone());
    }
    body
}

/// Compare every definition with the registry; nothing is changed here.
async fn plan<'a>(
    api: &Api,
    wanted: &'a [Definition],
    existing: &[Webhook],
    prune: bool,
) -> Result<Vec<Change<'a>>, CliError> {
    let mut by_name: HashMap<&str, Vec<&Webhook>> = HashMap::new();
    for w in existing {
        by_name.entry(w.name.as_str()).or_default().push(w);
    }
    let mut changes = Vec::new();
    for (index, definition) in wanted.iter().enumerate() {
        let name = definition.spec.name.as_str();
        match by_name.get(name).map(Vec::as_slice) {
            None | Some([]) => {
                if definition.spec.auth.credential().is_some_and(is_masked) {
                    return Err(masked_credential(index, name));
                }
                changes.push(Change::Create { index, definition });
            }
            Some([current]) => {
                if let Some(change) = compare(api, index, definition, current).await? {
                    changes.push(change);
                }
            }
            Some(several) => {
                let ids: Vec<&str> = several.iter().map(|w| w.id.as_str()).collect();
                return Err(CliError::Conflict(format!(
                    "{}: the registry holds {} webhooks of this name ({}); webhooks are matched by name, so rename or delete all but one first; nothing was changed",
                    entry(index, name),
                    several.len(),
                    ids.join(", ")
                )));
            }
        }
    }
    if prune {
        let named: HashSet<&str> = wanted.iter().map(|d| d.spec.name.as_str()).collect();
        let mut gone: Vec<&Webhook> = existing
            .iter()
            .filter(|w| !named.contains(w.name.as_str()))
            .collect();
        gone.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        changes.extend(gone.into_iter().map(|w| Change::Delete {
            name: w.name.clone(),
            id: w.id.clone(),
        }));
    }
    Ok(changes)
}

/// An update if the definition differs from the webhook, else `None`.
async fn compare<'a>(
    api: &Api,
    index: usize,
    definition: &'a Definition,
    current: &Webhook,
) -> Result<Option<Change<'a>>, CliError> {
    let name = definition.spec.name.as_str();
    let mut have = WebhookSpec::of(current);
    let mut want = definition.spec.clone();
    // The list masks the secret and the credential; the real ones are read only when there
    // is something to compare them with.
    let needs_real = definition.secret.is_some()
        || (want.auth.credential().is_some() && have.auth.credential().is_some())
        || current.url_secret
        || want.url_secret
        || current
            .headers
            .keys()
            .any(|h| current.is_credential_header(h));
    let real_secret = if needs_real {
        let s = secrets(api, &current.id)
            .await
            .map_err(|e| e.during(entry(index, name)))?;
        have.auth = s.auth;
        if let Some(url) = s.url {
            have.url = url;
        }
        if let Some(headers) = s.headers {
            have.headers = headers;
        }
        Some(s.secret)
    } else {
        None
    };
    // A masked credential keeps the real one, as it does in a PATCH.
    want.auth.keep_masked(&have.auth);
    if have.url_secret && want.url == kivihook_core::webhook::mask_url(&have.url) {
        want.url.clone_from(&have.url);
    }
    for (header, value) in want.headers.iter_mut() {
        if let Some(real) = have.headers.get(header) {
            if current.is_credential_header(header)
                && *value == kivihook_core::webhook::mask_credential(real)
            {
                value.clone_from(real);
            }
        }
    }
    if want.auth.credential().is_some_and(is_masked) {
        return Err(masked_credential(index, name));
    }
    let (want_json, have_json) = (want.to_json(), have.to_json());
    let mut fields: Vec<&'static str> = FIELDS
        .iter()
        .copied()
        .filter(|f| want_json.get(*f) != have_json.get(*f))
        .collect();
    let mut patch: Map<String, Value> = fields
        .iter()
        .map(|f| ((*f).to_owned(), want_json[*f].clone()))
        .collect();
    if let Some(secret) = &definition.secret {
        if Some(secret) != real_secret.as_ref() {
            fields.push("secret");
            patch.insert("secret".into(), Value::String(secret.clone()));
        }
    }
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(Change::Update {
        index,
        name,
        id: current.id.clone(),
        fields,
        patch: Value::Object(patch),
    }))
}

fn masked_credential(index: usize, name: &str) -> CliError {
    CliError::InvalidFile(format!(
        "webhooks[{index}].auth: holds a masked credential (as `export --no-secrets` writes it), which only keeps the credential of an existing webhook of the same auth type; give the real one (webhook `{name}`); nothing was changed"
    ))
}

/// Make one change; returns the id of the webhook it touched.
async fn make(api: &Api, change: &Change<'_>) -> Result<String, CliError> {
    match change {
        Change::Create { index, definition } => {
            let (_, created) = api
                .post(&["v1", "webhooks"], Some(&create_body(definition)))
                .await
                .map_err(|e| e.during(entry(*index, &definition.spec.name)))?;
            Ok(created["id"].as_str().unwrap_or("?").to_owned())
        }
        Change::Update {
            index,
            name,
            id,
            patch,
            ..
        } => {
            api.patch(&["v1", "webhooks", id], patch)
                .await
                .map_err(|e| e.during(entry(*index, name)))?;
            Ok(id.clone())
        }
        Change::Delete { name, id } => match api.delete(&["v1", "webhooks", id]).await {
            // Someone else deleted it meanwhile: the registry is as wanted all the same.
            Err(e) if e.status() == Some(404) => Ok(id.clone()),
            Err(e) => Err(e.during(format!("deleting `{name}` ({id})"))),
            Ok(()) => Ok(id.clone()),
        },
    }
}

/// One line of the plan, or of what was done (`id` is known once it is done).
fn describe(change: &Change<'_>, done: Option<&str>) -> String {
    let verb = |past: &str, future: &str| {
        if done.is_some() {
            past.to_owned()
        } else {
            format!("would {future}")
        }
    };
    match change {
        Change::Create { definition, .. } => match done {
            Some(id) => format!("created {} ({id})", definition.spec.name),
            None => format!("would create {}", definition.spec.name),
        },
        Change::Update {
            name, id, fields, ..
        } => format!(
            "{} {name} ({id}): {}",
            verb("updated", "update"),
            fields.join(", ")
        ),
        Change::Delete { name, id } => format!("{} {name} ({id})", verb("deleted", "delete")),
    }
}
