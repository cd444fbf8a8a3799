//! COPY and ADD: sources expanded and resolved, planned by `copy`, run
//! as a cached step.

use anyhow::Result;
use kiln_parser::Instruction;
use serde_json::{json, Value};

use super::copy::{self, CopyRequest, Source};
use super::inputs::{FileInputs, FromRef};
use super::op::FileOp;
use super::plan::Base;
use super::state::StageState;
use super::Builder;
use crate::fsutil::{self, RootView};

impl Builder {
    pub(super) fn resolve_source(
        &self,
        st: &StageState,
        from: &str,
        line: usize,
    ) -> Result<(RootView, FromRef)> {
        let from = self.src.expand(st, from, line)?;
        let base = self
            .plan
            .resolve_in(st.node, &from)
            .map_err(|e| self.src.located(line, &format!("{e:#}")))?;
        let layers = match base {
            Base::Stage(i) => self.stage_result(i)?.layers.clone(),
            Base::Scratch => vec![],
            // Resolved while the step's cache key is made, outside the
            // step's own error handling: located here, as FROM's base is.
            Base::Image(name) => {
                self.resolve_image(&name, st.node)
                    .map_err(|e| self.src.located(line, &format!("{e:#}")))?
                    .layers
            }
        };
        let ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        Ok((
            super::lazy_view::view(&self.store, &layers)?,
            FromRef { from, layers: ids },
        ))
    }

    pub(super) fn exec_copy(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        pos: &str,
        c: CopyArgs,
    ) -> Result<()> {
        let line = ins.span.line;
        let env = st.expand_env();
        let lx = self.src.lexer();
        let mut sources = Vec::new();
        let mut heredoc_bodies = Vec::new();
        for h in c.heredocs {
            let content = h.effective_content();
            let body = if h.expand {
                // BuildKit expands a heredoc's variables and escapes but
                // keeps its quotes as written.
                self.src
                    .lexer()
                    .skip_process_quotes(true)
                    .process_word(&content, &env)
                    .map_err(|e| self.src.located(line, &e.to_string()))?
            } else {
                content
            };
            heredoc_bodies.push((h.name.clone(), body.into_bytes()));
        }
        for s in c.sources {
            sources.push(
                lx.process_word(s, &env)
                    .map_err(|e| self.src.located(line, &e.to_string()))?,
            );
        }
        let dest_raw = lx
            .process_word(c.dest, &env)
            .map_err(|e| self.src.located(line, &e.to_string()))?;
        let dest_is_dir_hint =
            dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{}", st.workdir(), dest_raw)
        };
        let view = super::lazy_view::LazyView::new(self.store.clone(), &st.layers);
        let chown = match c.chown {
            Some(spec) => {
                let spec = self.src.expand(st, spec, line)?;
                Some(
                    fsutil::resolve_user(view.get()?, &spec)
                        .map_err(|e| self.src.located(line, &format!("{e:#}")))?,
                )
            }
            None => None,
        };
        let chmod = match c.chmod {
            Some(m) => {
                Some(copy::parse_chmod(m).map_err(|e| self.src.located(line, &format!("{e:#}")))?)
            }
            None => None,
        };
        let exclude = c
            .exclude
            .iter()
            .map(|e| self.src.expand(st, e, line))
            .collect::<Result<Vec<_>>>()?;
        let downloads = if c.add
            && sources.iter().any(|s| {
                s.starts_with("http://")
                    || s.starts_with("https://")
                    || super::git::parse(s).is_some()
            }) {
            Some(self.store.tempdir("add")?)
        } else {
            None
        };
        let checksum = match c.checksum {
            Some(cs) => Some(self.src.expand(st, cs, line)?),
            None => None,
        };
        let req = CopyRequest {
            checksum,
            download_dir: downloads.as_ref().map(|d| d.path().to_path_buf()),
            add: c.add,
            sources,
            dest,
            dest_is_dir_hint,
            heredoc_bodies,
            chown,
            chmod,
            exclude,
            parents: c.parents,
            unpack: c.unpack,
            keep_git_dir: c.keep_git_dir,
        };
        let (inputs, plan) = match c.from {
            Some(from) => {
                let (src_view, id) = self.resolve_source(st, from, line)?;
                let id = serde_json::to_value(&id)?;
                let (inputs, plan) = copy::plan_copy(Source::View(&src_view), id, &req, &view)
                    .map_err(|e| self.src.located(line, &format!("{e:#}")))?;
                (inputs, plan)
            }
            None => copy::plan_copy(Source::Context(&self.ctx), json!("context"), &req, &view)
                .map_err(|e| self.src.located(line, &format!("{e:#}")))?,
        };
        let Value::Object(plan_inputs) = inputs else {
            unreachable!("copy::plan_copy describes a step as a JSON object")
        };
        let op = FileOp {
            inputs: FileInputs {
                plan: plan_inputs,
                link: c.link,
            },
            plan,
            view,
        };
        self.cached_step(st, ins, pos, op)
    }
}

pub(super) struct CopyArgs<'a> {
    pub(super) add: bool,
    pub(super) sources: &'a [String],
    pub(super) dest: &'a str,
    pub(super) heredocs: &'a [kiln_parser::Heredoc],
    pub(super) from: Option<&'a str>,
    pub(super) chown: Option<&'a str>,
    pub(super) chmod: Option<&'a str>,
    pub(super) exclude: &'a [String],
    pub(super) parents: bool,
    pub(super) unpack: bool,
    pub(super) link: bool,
    pub(super) checksum: Option<&'a str>,
    pub(super) keep_git_dir: bool,
}

impl<'a> CopyArgs<'a> {
    pub(super) fn copy(c: &'a kiln_parser::Copy) -> CopyArgs<'a> {
        CopyArgs {
            add: false,
            sources: &c.sources,
            dest: &c.dest,
            heredocs: &c.heredocs,
            from: c.from.as_deref(),
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            exclude: &c.exclude,
            parents: c.parents,
            unpack: false,
            link: c.link,
            checksum: None,
            keep_git_dir: false,
        }
    }

    pub(super) fn add(c: &'a kiln_parser::Add) -> CopyArgs<'a> {
        CopyArgs {
            add: true,
            sources: &c.sources,
            dest: &c.dest,
            heredocs: &c.heredocs,
            from: None,
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            exclude: &c.exclude,
            parents: false,
            unpack: c.unpack.unwrap_or(true),
            link: c.link,
            checksum: c.checksum.as_deref(),
            keep_git_dir: c.keep_git_dir,
        }
    }
}
