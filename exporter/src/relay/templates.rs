//! The relay's template table: forwarded layout → relay template id.
//!
//! Template remapping ([`TemplateRegistry`]): records go out under
//! relay-owned template ids, one per distinct *forwarded layout* (scope
//! count and field specifiers), whichever router or router template id it
//! came from. Routers' ids therefore never collide (two routers' 256 become
//! different relay ids when their layouts differ, and share one when they
//! are equal), and the id of a layout never changes: the table is written
//! to the template file (atomically) before the first record of a new
//! layout is handed on, and loaded at start, so a replay after a restart
//! announces the very templates its records were numbered under. The router
//! sessions only define ids in memory; the listeners, their drivers, write
//! the file ([`SharedRegistry::persist`]) before they hand records on, and
//! hand on only records whose id is in it. A router
//! that redefines a template id gets the new layout's relay id for its
//! later records; records already buffered keep theirs. The pool user core
//! learns templates at run time (`Exporter::add_template`) and announces
//! them on every association before data that uses them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, bail};
use protocol::ipfix::{FieldSpecifier, Template};

use crate::stream::TemplateSource;

/// Smallest relay template id (RFC 7011: data set ids start at 256).
pub const FIRST_RELAY_TEMPLATE_ID: u16 = 256;

/// Why a record got no relay template id.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `max_templates` distinct layouts are defined already.
    #[error("relay template limit of {0} reached")]
    Limit(usize),
}

/// The relay's templates: forwarded layout → relay template id, in the
/// order they were first seen, persisted in a text file (one template a
/// line: `id scope_count enterprise/element/length ...`).
#[derive(Debug)]
pub struct TemplateRegistry {
    by_layout: HashMap<(u16, Vec<FieldSpecifier>), u16>,
    templates: Vec<Template>,
    max_templates: usize,
    file: Option<PathBuf>,
    /// The first this many templates are in the file.
    persisted: usize,
}

impl TemplateRegistry {
    /// A registry that is not persisted (tests, tools).
    pub fn in_memory(max_templates: usize) -> Self {
        Self {
            by_layout: HashMap::new(),
            templates: Vec::new(),
            max_templates,
            file: None,
            persisted: 0,
        }
    }

    /// Loads the table from `path` (absent: empty) and persists new
    /// entries there.
    pub fn open(path: &Path, max_templates: usize) -> anyhow::Result<Self> {
        let mut registry = Self::in_memory(max_templates);
        match fs::read_to_string(path) {
            Ok(text) => {
                for template in parse_templates(&text)
                    .with_context(|| format!("in template file {}", path.display()))?
                {
                    registry.by_layout.insert(
                        (template.scope_field_count, template.fields.clone()),
                        template.id,
                    );
                    registry.templates.push(template);
                }
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        }
        registry.file = Some(path.to_path_buf());
        registry.persisted = registry.templates.len();
        Ok(registry)
    }

    /// Every template, in id order.
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The template of a relay id.
    pub fn get(&self, template_id: u16) -> Option<&Template> {
        let index = template_id.checked_sub(FIRST_RELAY_TEMPLATE_ID)? as usize;
        self.templates.get(index)
    }

    /// The relay id of a forwarded layout, defining a new one the first
    /// time a layout is seen (in memory: [`SharedRegistry::persist`] writes
    /// it to the file).
    pub fn relay_id(
        &mut self,
        scope_field_count: u16,
        fields: &[FieldSpecifier],
    ) -> Result<u16, RegistryError> {
        if let Some(&id) = self.by_layout.get(&(scope_field_count, fields.to_vec())) {
            return Ok(id);
        }
        let limit = self.max_templates.min(usize::from(u16::MAX - 255));
        if self.templates.len() >= limit {
            return Err(RegistryError::Limit(limit));
        }
        let id = FIRST_RELAY_TEMPLATE_ID + self.templates.len() as u16;
        self.templates
            .push(Template::new(id, scope_field_count, fields.to_vec()));
        self.by_layout
            .insert((scope_field_count, fields.to_vec()), id);
        Ok(id)
    }

    /// Ids below this are in the template file (every id, without a file).
    pub fn durable_below(&self) -> u16 {
        let durable = if self.file.is_some() {
            self.persisted
        } else {
            self.templates.len()
        };
        FIRST_RELAY_TEMPLATE_ID + durable as u16
    }
}

fn format_templates(templates: &[Template]) -> String {
    let mut text = String::from(
        "# poolflow relay templates: id scope_field_count enterprise/element/length ...\n",
    );
    for t in templates {
        text.push_str(&format!("{} {}", t.id, t.scope_field_count));
        for f in &t.fields {
            text.push_str(&format!(" {}/{}/{}", f.enterprise, f.id, f.length));
        }
        text.push('\n');
    }
    text
}

fn parse_templates(text: &str) -> anyhow::Result<Vec<Template>> {
    let mut templates = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parse = || -> anyhow::Result<Template> {
            let mut words = line.split_whitespace();
            let id: u16 = words.next().context("no id")?.parse()?;
            let scope: u16 = words.next().context("no scope count")?.parse()?;
            let fields = words
                .map(|word| {
                    let mut parts = word.split('/');
                    let mut next = || parts.next().context("field is not e/id/length");
                    Ok(FieldSpecifier::enterprise(
                        next()?.parse()?,
                        next()?.parse()?,
                        next()?.parse()?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if fields.is_empty() || usize::from(scope) > fields.len() {
                bail!("bad field or scope count");
            }
            Ok(Template::new(id, scope, fields))
        };
        let template = parse().with_context(|| format!("line {}", n + 1))?;
        // Ids are dense from 256: the line order is the id order.
        let expected = FIRST_RELAY_TEMPLATE_ID as usize + templates.len();
        if usize::from(template.id) != expected {
            bail!(
                "line {}: template id {}, expected {expected}",
                n + 1,
                template.id
            );
        }
        templates.push(template);
    }
    Ok(templates)
}

/// Writes FILE.tmp, fsyncs, renames over FILE and fsyncs the directory.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The registry shared by the listeners and the pool user.
#[derive(Debug, Clone)]
pub struct SharedRegistry(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    registry: Mutex<TemplateRegistry>,
    /// Held while the file is written (see [`SharedRegistry::persist`]).
    writing: Mutex<()>,
}

impl SharedRegistry {
    /// Shares `registry`.
    pub fn new(registry: TemplateRegistry) -> Self {
        Self(Arc::new(Shared {
            registry: Mutex::new(registry),
            writing: Mutex::new(()),
        }))
    }

    /// The registry; a panic elsewhere while holding it leaves the table
    /// consistent (entries are added whole), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, TemplateRegistry> {
        self.0
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the templates defined since the last write to the template
    /// file, if any, and returns the first id not in the file. The write
    /// (an fsync or two) holds only the writers' lock, never the table's,
    /// so other listeners decode on meanwhile; writers take turns, so a
    /// later write never renames an older table over a newer one.
    pub fn persist(&self) -> io::Result<u16> {
        // Nearly every message defines nothing new: answered under the
        // table's lock alone, without queueing behind a writer.
        {
            let registry = self.lock();
            if registry.file.is_none() || registry.persisted == registry.templates.len() {
                return Ok(registry.durable_below());
            }
        }
        let _turn = self
            .0
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (path, text, count) = {
            let registry = self.lock();
            match &registry.file {
                Some(path) if registry.persisted < registry.templates.len() => (
                    path.clone(),
                    format_templates(&registry.templates),
                    registry.templates.len(),
                ),
                _ => return Ok(registry.durable_below()),
            }
        };
        write_atomically(&path, &text)?;
        let mut registry = self.lock();
        registry.persisted = registry.persisted.max(count);
        Ok(registry.durable_below())
    }
}

impl TemplateSource for SharedRegistry {
    fn template(&self, template_id: u16) -> Option<Template> {
        self.lock().get(template_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::relay::fixtures::{ROUTER_A, ROUTER_B, router_template};
    use crate::relay::rewrite::forwarded_layout;

    #[test]
    fn template_table_survives_a_restart_with_the_same_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.templates");
        let (first, second) = {
            let shared = SharedRegistry::new(TemplateRegistry::open(&path, 8).unwrap());
            let (scope, fields) = forwarded_layout(&router_template(256), ROUTER_A, false);
            let first = shared.lock().relay_id(scope, &fields).unwrap();
            let (scope, fields) = forwarded_layout(&router_template(256), ROUTER_A, true);
            let second = shared.lock().relay_id(scope, &fields).unwrap();
            assert_eq!(shared.lock().durable_below(), 256, "defined, not written");
            assert_eq!(shared.persist().unwrap(), 258);
            (first, second)
        };
        assert_eq!((first, second), (256, 257));
        let mut reopened = TemplateRegistry::open(&path, 8).unwrap();
        assert_eq!(reopened.templates().len(), 2);
        let (scope, fields) = forwarded_layout(&router_template(999), ROUTER_B, true);
        assert_eq!(reopened.relay_id(scope, &fields).unwrap(), second);
        assert_eq!(reopened.get(257).unwrap().fields, fields);
        // Damaged files are refused rather than renumbered.
        fs::write(&path, "257 0 0/8/4\n").unwrap();
        assert!(TemplateRegistry::open(&path, 8).is_err());
    }
}
