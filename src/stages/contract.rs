//! What each stage's instruction promises about its grade: gates, invocations, copy rules and networks, from the constants the scorers use.
//!
//! The scorers read their gates through [`crate::config::gates::Gate`], run programs with the command lines built here, and
//! copy the selfhost recipe by the rules here; [`facts`] turns the same values into the sentences of
//! each instruction's "How this stage is graded" section, and [`instruction`] renders it into the
//! stage's `instruction.md`. A test renders every stage of every suite and checks that each fact is
//! in the text, so an instruction cannot drift from its grader.

use crate::config::suite::{Gpus, SandboxLimits, ScoringLimits};
use crate::config::suite::{Home, Stage, StageNetwork, Suite, SuiteError};

use crate::config::gates::{
    CRAWL_PRECISION, CRAWL_RECALL, EVAL_CLAIM_TOLERANCE, EVAL_GENERALISATION_TOLERANCE,
    SELFHOST_BPB_TOLERANCE, TOKENIZE_BYTES_PER_TOKEN, TRAIN_XZ_RATIO,
};

/// crawl: the corpus the stage grades.
pub(crate) const CORPUS: &str = "data/corpus.jsonl";
/// crawl: the largest corpus read (bigger ones are rejected, not truncated).
pub(crate) const MAX_CORPUS_BYTES: u64 = 256 * 1024 * 1024;
/// crawl: a document is a near-duplicate when this share of its shingles first appeared in one
/// earlier document.
pub(crate) const DUPLICATE_SHARE: f64 = 0.8;
/// tokenize: the vocabulary file and the program.
pub(crate) const TOKENIZER_META: &str = "tokenizer/meta.json";
pub(crate) const TOKENIZER_PROGRAM: &str = "bin/tokenize";
/// train, eval, selfhost: the model program.
pub(crate) const LM_PROGRAM: &str = "bin/lm";
/// eval: the report, and the most validation text it may name.
pub(crate) const EVAL_REPORT: &str = "eval/report.json";
pub(crate) const MAX_VAL_BYTES: usize = 4 * 1024 * 1024;

/// The selfhost recipe's entry point, at the workspace root.
pub(crate) const RECIPE: &str = "bootstrap.sh";
/// The largest file the recipe copy takes.
pub(crate) const MAX_FILE_BYTES: u64 = 256 * 1024;
/// The most the recipe copy takes in all.
pub(crate) const MAX_RECIPE_BYTES: u64 = 2 * 1024 * 1024;
/// Directories never copied into the rebuild: what the recipe must rebuild.
pub(crate) const EXCLUDED: [&str; 3] = ["data", "model", "tokenizer"];
/// Bytes of built artifacts a recipe may carry verbatim before the files carrying them are refused.
pub(crate) const SMUGGLE_LIMIT: u64 = 128 * 1024;

/// Distinct spans of the hidden test documents (see [`crate::stages::contamination`]) that reject a
/// stage when found in what its agent wrote: one accidental coincidence does not.
pub const CONTAMINATION_MIN_SPANS: usize = 4;

/// The contamination rule, as every instruction states it.
const CONTAMINATION_RULE: &str = "Text of the hidden documents found in anything you write rejects the stage: your tool-call arguments, every step of the workspace history (text written and deleted later counts) and the graded files are searched for it (case, spacing and punctuation ignored; text the offline web serves never counts). A rejected stage is not graded, and the leaderboard marks the run. Once it is found in a stage, every later stage of the run is rejected too: text kept anywhere (`/tmp`, your home directory) could be used later.";

/// Where every command of the agent and every graded program runs.
pub const WORKSPACE: &str = "/workspace";

/// The command line that runs the recipe, as the grade and `check` run it: the file itself when it
/// is executable (its `#!` line decides the interpreter; a file without one is run by bash), else
/// `bash` on it.
pub(crate) fn bootstrap_command(executable: bool) -> String {
    if executable {
        format!("./{RECIPE}")
    } else {
        format!("bash ./{RECIPE}")
    }
}

/// The command line of one graded call of an agent's program (`./bin/lm score`), run by `bash -c`
/// in [`WORKSPACE`].
pub(crate) fn program_command(program: &str, verb: &str) -> String {
    format!("./{program} {verb}")
}

/// One graded fact, stated in the instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// What it is about, for tests and messages (`invocation`, `gate`, `network`...).
    pub topic: &'static str,
    pub text: String,
}

fn fact(topic: &'static str, text: String) -> Fact {
    Fact { topic, text }
}

/// What [`facts`] needs besides the stage.
pub struct FactContext<'a> {
    pub suite: &'a Suite,
    /// The image's user, uid, environment and packages (None when its recipe cannot be read).
    pub image: Option<&'a crate::config::image::Recipe>,
    /// What was measured in the image when it was built (None: not known here).
    pub measured: Option<&'a crate::config::image::ImageFacts>,
    /// The domain the model is judged on, when the suite's world has a target site.
    pub domain: Option<Domain>,
    /// How the world makes its hidden documents, when it says more than "pages held out".
    pub hidden: Option<HiddenText>,
    /// What each host's `robots.txt` allows, in a sentence (None without a world).
    pub robots: Option<String>,
    /// The suite's world's config (None without a world or a readable config).
    pub world: Option<crate::world::WorldConfig>,
}

impl<'a> FactContext<'a> {
    /// A suite's context, its world's config read once.
    pub fn of(
        home: &Home,
        suite: &'a Suite,
        image: Option<&'a crate::config::image::Recipe>,
    ) -> Self {
        let load = |w: &str| crate::world::WorldConfig::load(home, w).ok().map(|c| c.0);
        let world = suite.world.as_deref().and_then(load);
        Self {
            suite,
            image,
            measured: None,
            domain: world.as_ref().and_then(Domain::of),
            hidden: world.as_ref().and_then(HiddenText::of),
            robots: world.as_ref().map(robots_fact),
            world,
        }
    }
}

/// What a world does to the text its hidden documents come from.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenText {
    /// Whose pages: the target site's, or the general web's.
    pub of: String,
    /// Served and held out as a private variant (`world::private`).
    pub private: bool,
    /// Drawn as whole families (`world::holdout`).
    pub families: bool,
    /// Bytes of hidden documents the draw stops at, and the largest hidden document.
    pub bytes: usize,
    pub max_doc: usize,
}

/// The smallest page that is a hidden document, as `world::holdout` draws them.
pub use crate::world::holdout::MIN_DOC as HIDDEN_MIN_DOC_BYTES;

impl HiddenText {
    /// The suite's world's (None without a world, when it draws pages plainly, or when its config
    /// cannot be read).
    pub fn of(cfg: &crate::world::WorldConfig) -> Option<Self> {
        let families = cfg.holdout == crate::world::holdout::Holdout::Families;
        let of = match cfg.sites.iter().find(|s| s.target) {
            Some(s) => format!("{}'s pages ({})", s.domain, s.host),
            None => format!(
                "the documentation the general web serves ({})",
                and_list(&crate::world::generate::HOSTS.map(String::from))
            ),
        };
        (cfg.private || families).then_some(Self {
            of,
            private: cfg.private,
            families,
            bytes: cfg.test_bytes,
            max_doc: cfg.max_test_doc_bytes,
        })
    }

    /// The facts it makes, in every stage.
    fn facts(&self) -> Vec<Fact> {
        let mut out = Vec::new();
        if self.private {
            out.push(fact("private", format!(
                "The text of {} is a private variant of public documentation, fixed by this world's seed: its words are consistently renamed (a word always becomes the same other word of the same length and about as frequent; punctuation, digits, layout, words of one or two letters and common English words stay). Public copies of that documentation, and what you remember of it, do not match it: only the crawl teaches it.",
                self.of
            )));
        }
        if self.families {
            out.push(fact("draw", self.draw()));
        }
        out
    }

    /// How whole families are drawn, as the eval stage's validation set can be.
    fn draw(&self) -> String {
        use crate::world::holdout::{COMMON, CONTAINMENT, SEQUENCE_WORDS};
        format!(
            "The hidden documents are a random draw of whole families of {}: pages that share a line of 40 bytes or more, or {} of the smaller page's {SEQUENCE_WORDS}-word sequences, are one family (text shared by more than {COMMON} pages is boilerplate and joins none), and no family is split between the hidden documents and the web. The draw takes the pages in a random order and withholds each one's whole family, until its pages of {} to {} bytes, the hidden documents, reach {} bytes (a family larger than that in all, or with no page of that size, is never drawn). A validation set drawn the same way, whole families of your pages at random, predicts the hidden score.",
            self.of,
            pct(CONTAINMENT),
            thousands(HIDDEN_MIN_DOC_BYTES),
            thousands(self.max_doc),
            thousands(self.bytes)
        )
    }
}

/// A world's target site, as the instructions name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub name: String,
    pub host: String,
    /// The hosts of the world's documentation sites (`[[sites]]`).
    pub sites: Vec<String>,
    /// What the world's documentation sites hold beyond the seed sites' trouble, in words.
    pub trouble: Vec<String>,
}

impl Domain {
    /// The target site of the suite's world (None without a world, a target or a readable config).
    pub fn of(cfg: &crate::world::WorldConfig) -> Option<Self> {
        let mut trouble = vec!["paginated listings (`/pages/N/`)".to_string()];
        if cfg.sites.iter().any(|s| s.search_only_share > 0.0) {
            trouble.push(format!(
                "pages that no listing, link or sitemap names, found only through the site's search form (`{}?q=words`: a page is a result when each query word is part of its title)",
                crate::world::sites::SEARCH_PATH
            ));
        }
        if cfg.sites.iter().any(|s| s.near_duplicates > 0) {
            trouble.push(
                "near-duplicate copies of pages under `/archive/` (slightly edited; not gold)"
                    .into(),
            );
        }
        if cfg.sites.iter().any(|s| s.soft_404) {
            trouble.push("links to missing pages that the site answers with status 200 and a \"Page not found\" page (a soft 404; its text is not gold)".into());
        }
        cfg.sites.iter().find(|s| s.target).map(|s| Domain {
            name: s.domain.clone(),
            host: s.host.clone(),
            sites: cfg.sites.iter().map(|s| s.host.clone()).collect(),
            trouble,
        })
    }
}

/// What each host's `robots.txt` disallows for `User-agent: *`, from the rules the world's
/// scorer reads (`world::generate::general_robots` for the general web, `world::sites`'s
/// `ADMIN_PREFIX` for the documentation sites); the mirror has no `robots.txt`. `tests/world.rs`
/// checks this against a generated world.
pub fn robots_rules(cfg: &crate::world::WorldConfig) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = crate::world::generate::general_robots()
        .into_iter()
        .collect();
    out.push((crate::world::generate::MIRROR.to_string(), vec![]));
    for s in &cfg.sites {
        out.push((
            s.host.clone(),
            vec![crate::world::sites::ADMIN_PREFIX.into()],
        ));
    }
    out
}

/// The crawl's fact of what a polite crawler may fetch on each host.
fn robots_fact(cfg: &crate::world::WorldConfig) -> String {
    let hosts: Vec<String> = robots_rules(cfg)
        .into_iter()
        .map(|(host, rules)| {
            let search = cfg
                .sites
                .iter()
                .any(|s| s.host == host && s.search_only_share > 0.0);
            match rules.as_slice() {
                [] => format!("{host} has no `robots.txt`: everything is allowed"),
                _ => format!(
                    "{host} disallows {}{}",
                    and_list(&rules.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>()),
                    if rules.iter().any(|r| r == crate::world::sites::SEARCH_PATH) {
                        " (its search is off limits)".to_string()
                    } else if search {
                        format!(
                            " only, so its search form (`{}?q=`) may be used",
                            crate::world::sites::SEARCH_PATH
                        )
                    } else {
                        String::new()
                    }
                ),
            }
        })
        .collect();
    format!(
        "What each host's `robots.txt` allows a polite crawler (`User-agent: *`; a request to a disallowed URL is a robots violation): {}.",
        hosts.join("; ")
    )
}

fn pct(x: f64) -> String {
    format!("{}%", crate::trace::round(x * 100.0, 4))
}

/// `400000` as `400,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(v: f64) -> String {
    format!("{} s", v.round() as i64)
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    joined(items, "and")
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    joined(items, "or")
}

fn joined(items: &[String], word: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} {word} {last}", rest.join(", ")),
    }
}

/// The directories the recipe copy leaves out for this suite, as `data/`.
pub(crate) fn excluded_dirs(suite: &Suite) -> Vec<String> {
    let extra = suite
        .stages
        .iter()
        .find(|s| s.name == "selfhost")
        .map(|s| s.exclude.clone())
        .unwrap_or_default();
    EXCLUDED
        .iter()
        .map(|d| d.to_string())
        .chain(extra)
        .map(|d| format!("`{}/`", d.trim_end_matches('/')))
        .collect()
}

fn scoring_sandbox(sc: &ScoringLimits) -> String {
    format!(
        "each call in a fresh sandbox of the same image: no network, `{WORKSPACE}` read-only, {} MiB of memory, {} CPU, {} per call",
        sc.memory_mb,
        sc.cpus,
        secs(sc.timeout_seconds)
    )
}

fn user(ctx: &FactContext) -> String {
    match ctx.image {
        Some(r) => format!("user `{}` (uid {})", r.user, r.uid),
        None => "the sandbox's non-root user".into(),
    }
}

fn network(stage: &Stage) -> String {
    match stage.network {
        StageNetwork::World => {
            "During this stage's own tool calls the sandbox reaches the offline web (the seed sites, plain HTTP) and nothing else: there is no internet."
                .into()
        }
        StageNetwork::None => {
            "During this stage's own tool calls the sandbox has no network at all (the offline web is not reachable)."
                .into()
        }
    }
}

/// What the crawl meets on the web: each host's robots rules and the documentation sites' trouble.
fn web_facts(ctx: &FactContext) -> Vec<Fact> {
    let robots = ctx.robots.iter().map(|r| fact("robots", r.clone()));
    let sites = ctx.domain.iter().map(|d| {
        let (sites, trouble) = (and_list(&d.sites), and_list(&d.trouble));
        fact(
            "sites",
            format!("The documentation sites ({sites}) have {trouble}."),
        )
    });
    robots.chain(sites).collect()
}

/// The crawl stage's own facts: what is graded, what recall counts, what the sites hold.
fn crawl_facts(ctx: &FactContext) -> Vec<Fact> {
    let g = &ctx.suite.gates;
    let mut out = Vec::new();
    out.push(fact(
        "artifact",
        format!(
            "Graded: `{}` as it is when the stage ends (at most {} MiB), and the web server's log of this stage's requests.",
            CORPUS,
            MAX_CORPUS_BYTES >> 20
        ),
    ));
    let recall_of = match &ctx.domain {
        Some(d) => format!(
            "of the gold text of {} (the {} site; recall counts the shingles of its pages that no other site's pages have, so the other sites count for precision, not recall)",
            d.host, d.name
        ),
        None => "against the hidden gold text".into(),
    };
    out.push(fact(
        "gate",
        format!(
            "To pass: recall at least {} {recall_of} and precision at least {} against the hidden gold text of every site (measured on 8-byte shingles of whitespace-collapsed text), and no robots violation (no request to a disallowed URL, no text of such a page in the corpus). A document earns recall only for the text of the page the web server answered with status 200 at its `url` during this stage (host and path as the server reads them: the query and fragment are dropped, so a print view counts as its page); a redirect's source URL, a soft 404, a search result page, an archive copy and a mirror earn none, and text written from memory earns nothing (all text still counts for precision).",
            CRAWL_RECALL.value(g),
            CRAWL_PRECISION.value(g)
        ),
    ));
    out.extend(web_facts(ctx));
    out.push(fact(
        "reported",
        format!(
            "Reported but not gated: the duplicate rate (a document that repeats an earlier one, or has {} of its shingles in one earlier document, is a duplicate), requests into traps, and the request count.",
            pct(DUPLICATE_SHARE)
        ),
    ));
    out
}

/// The selfhost stage's own facts: the copy, the rebuild, its budget and network, the gate and the
/// top level.
fn selfhost_facts(ctx: &FactContext, excluded: &str) -> Vec<Fact> {
    let (suite, g, sb) = (ctx.suite, &ctx.suite.gates, &ctx.suite.sandbox);
    let mut out = Vec::new();
    out.push(fact(
            "copy",
            format!(
                "Copied into a fresh, empty `{WORKSPACE}`: the regular files of your workspace of at most {} KiB each and {} MiB in all (`{RECIPE}` first, then in path order), nothing under {excluded}, no symlinks, executable bits kept. Files that carry more than {} KiB copied verbatim from files under those folders (a model split into parts) are refused.",
                MAX_FILE_BYTES / 1024,
                MAX_RECIPE_BYTES / (1024 * 1024),
                SMUGGLE_LIMIT / 1024
            ),
        ));
    out.push(fact(
            "invocation",
            format!(
                "The harness runs `{}` when `{RECIPE}` is executable (its `#!` line is honoured; without one, bash runs it), otherwise `{}`, with `bash -c` from `{WORKSPACE}` as {}, in a new sandbox of the same image and limits as yours ({} MiB, {} CPU) with an empty home directory: nothing outside the copied recipe survives.",
                bootstrap_command(true),
                bootstrap_command(false),
                user(ctx),
                sb.memory_mb,
                sb.cpus
            ),
        ));
    out.push(fact(
            "budget",
            format!(
                "`{RECIPE}` gets {} of wall time, the sum of the earlier stages' command-time budgets; past it, it is killed and the stage fails.",
                secs(suite.rebuild_seconds)
            ),
        ));
    out.push(fact(
            "rebuild network",
            "While the recipe runs, the offline web is reachable again at the same seed URLs (a fresh server with its own request log); the rebuild's crawl is not graded.".into(),
        ));
    out.push(fact(
            "gate",
            format!(
                "To pass: `{RECIPE}` exits with code 0 within its budget, the rebuilt `{}` verifies exactly as in the train stage on the hidden documents, and its verified bits per byte is within {} of the original's. The original is the `{}` in your `{WORKSPACE}` when this stage ends, verified on the same hidden documents.",
                LM_PROGRAM,
                pct(SELFHOST_BPB_TOLERANCE.value(g)),
                LM_PROGRAM
            ),
        ));
    out.push(fact(
            "not graded",
            format!(
                "Only the rebuilt `{}` is graded: the rebuild's corpus, tokenizer and `{}` are not graded again.",
                LM_PROGRAM,
                EVAL_REPORT
            ),
        ));
    out.push(fact(
            "top level",
            "The top level (L6) also asks the rebuilt model's verified bits per byte to beat per-document `xz -9e` given all the content text the offline web serves: for each hidden document d, the size of `xz -9e` of C followed by d less the size of `xz -9e` of C alone, where C is the main text of every content page the web serves (the gold text the crawl is graded on, not listings, archive copies or mirrors) joined by blank lines; those sizes summed, in bits, over the hidden documents' bytes.".into(),
        ));
    out.push(fact(
            "check",
            format!(
                "`check` checks the layout, the caps and `bash -n {RECIPE}` in a moment. `check` with `{{\"rebuild\": true}}` runs the rebuild exactly as the grade does (fresh sandbox, same copy, same command, the web reachable) and verifies the rebuilt `{}` on your own documents; its time counts against this stage's command-time budget and it gives back the exit code, the log's tail and the rebuilt model's bits per byte.",
                LM_PROGRAM
            ),
        ));
    out
}

/// Every fact the stage's grade depends on, in words, from the values its scorer uses.
pub fn facts(stage: &Stage, ctx: &FactContext) -> Vec<Fact> {
    let suite = ctx.suite;
    let g = &suite.gates;
    let sc = &suite.scoring;
    let sb = &suite.sandbox;
    let excluded = or_list(&excluded_dirs(suite));
    let mut out = Vec::new();
    let env = environment(ctx, sb);
    out.push(fact(
        "commands",
        format!(
            "Your `bash` calls run as `bash -c <cmd>` in `{WORKSPACE}` as {}, with {} MiB of memory, {} CPU and at most {} processes{}.",
            user(ctx),
            sb.memory_mb,
            sb.cpus,
            sb.pids,
            if env.is_empty() { String::new() } else { format!("; the environment is `{env}`") }
        ),
    ));
    out.extend(gpu_fact(sb));
    if let Some(r) = ctx.image {
        out.push(libraries(r, ctx.measured.and_then(|m| m.sentence(sb.cpus))));
    }
    out.push(fact(
        "disk",
        format!(
            "`{WORKSPACE}` holds at most {} MiB; `/tmp` and your home directory {} MiB each (in memory); everything else is read-only. A write past a limit fails with \"No space left on device\". Processes you start end with the stage: none runs on into the next stage or while the stage is graded.",
            sb.disk_mb, sb.tmp_mb
        ),
    ));
    out.push(fact("network", network(stage)));
    if let Some(h) = &ctx.hidden {
        out.extend(h.facts());
    }
    if stage.name != "selfhost" {
        out.push(fact(
            "copy",
            format!(
                "The last stage rebuilds everything from your recipe in a fresh sandbox and copies only the recipe: regular files of at most {} KiB each and {} MiB in all, nothing under {excluded} (what the recipe must rebuild), no symlinks. Keep code you will need again outside those folders from the start (for example under `src/`).",
                MAX_FILE_BYTES / 1024,
                MAX_RECIPE_BYTES / (1024 * 1024)
            ),
        ));
    }
    if let Some(d) = &ctx.domain {
        out.push(fact(
            "domain",
            format!(
                "Your model is judged on {n} text: the hidden documents are pages of {h} (the {n} documentation) held out from the web, never served. The out-of-domain documents are pages held out of the other sites.",
                n = d.name,
                h = d.host
            ),
        ));
    }
    out.push(fact("contamination", CONTAMINATION_RULE.into()));
    match stage.name.as_str() {
        "crawl" => out.extend(crawl_facts(ctx)),
        "tokenize" => {
            out.push(fact(
                "artifact",
                format!(
                    "Graded: `{}` (`vocab_size` at most {}) and `{}` as they are when the stage ends.",
                    TOKENIZER_META,
                    sc.max_vocab_size,
                    TOKENIZER_PROGRAM
                ),
            ));
            out.push(fact(
                "invocation",
                format!(
                    "The grade runs `{}` and `{}` with `bash -c` from `{WORKSPACE}` as {}, {}; the hidden documents and arbitrary-byte cases go on stdin.",
                    program_command(TOKENIZER_PROGRAM, "encode"),
                    program_command(TOKENIZER_PROGRAM, "decode"),
                    user(ctx),
                    scoring_sandbox(sc)
                ),
            ));
            out.push(fact(
                "gate",
                format!(
                    "To pass: the exact round trip of every hidden text, every id below `vocab_size`, and at least {} bytes per token on the hidden documents. Encoding speed is reported, not gated.",
                    TOKENIZE_BYTES_PER_TOKEN.value(g)
                ),
            ));
        }
        "train" => {
            out.push(fact(
                "artifact",
                format!(
                    "Graded: `{}` as it is when the stage ends (eval and selfhost grade the `{}` present at their own end).",
                    LM_PROGRAM,
                    LM_PROGRAM
                ),
            ));
            out.push(fact(
                "invocation",
                format!(
                    "The grade runs `{}` once on all hidden documents, `{}` once on {} random positions, and `{}` again on {} documents, with `bash -c` from `{WORKSPACE}` as {}, {}.",
                    program_command(LM_PROGRAM, "score"),
                    program_command(LM_PROGRAM, "next"),
                    sc.positions,
                    program_command(LM_PROGRAM, "score"),
                    crate::stages::bpb::REPEATED_DOCS,
                    user(ctx),
                    scoring_sandbox(sc)
                ),
            ));
            out.push(fact(
                "tolerances",
                format!(
                    "Accepted only if the tokens spell every text exactly, the repeated scores agree within {:e}, and each `next` distribution sums to 1 within {:e} and agrees with `score` within {:e}.",
                    crate::stages::bpb::REPEAT_TOLERANCE,
                    crate::stages::bpb::NEXT_TOLERANCE,
                    crate::stages::bpb::NEXT_TOLERANCE
                ),
            ));
            let ratio = TRAIN_XZ_RATIO.value(g);
            out.push(fact(
                "gate",
                format!(
                    "To pass: verified bits per byte below {}per-document `xz -9e` on the hidden documents.",
                    if ratio == 1.0 { String::new() } else { format!("{ratio} × ") }
                ),
            ));
        }
        "eval" => {
            out.push(fact(
                "artifact",
                format!(
                    "Graded: `{}` and the file its `val_path` names (at most {} MiB, in the workspace), with the `{}` present when this stage ends.",
                    EVAL_REPORT,
                    MAX_VAL_BYTES >> 20,
                    LM_PROGRAM
                ),
            ));
            out.push(fact(
                "invocation",
                format!(
                    "The grade verifies `{}` as in the train stage (the same calls and sandboxes) on the validation documents and on the hidden documents.",
                    LM_PROGRAM
                ),
            ));
            out.push(fact(
                "gate",
                format!(
                    "To pass: |claimed − measured| / measured at most {} on the validation file, and |validation bpb − hidden bpb| / hidden bpb at most {}.",
                    pct(EVAL_CLAIM_TOLERANCE.value(g)),
                    pct(EVAL_GENERALISATION_TOLERANCE.value(g))
                ),
            ));
        }
        "selfhost" => out.extend(selfhost_facts(ctx, &excluded)),
        _ => {}
    }
    if let Some(t) = crate::stages::scale::instruction_text(&stage.name, TRAIN_XZ_RATIO.value(g)) {
        out.push(fact("score", t));
    }
    out
}

/// The environment commands start with: the image's, the thread counts of the CPUs, and what the
/// GPUs need (empty when the image's recipe cannot be read).
fn environment(ctx: &FactContext, sb: &SandboxLimits) -> String {
    let image = ctx
        .image
        .map(|r| r.env.iter().map(|(k, v)| format!("{k}={v}")));
    let Some(vars) = image else {
        return String::new();
    };
    let threads = crate::config::suite::thread_env(sb.cpus);
    let gpus = crate::config::suite::gpu_env(sb.gpus.as_ref());
    vars.chain(threads)
        .chain(gpus)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which GPUs the sandboxes have and what grading on them asks (None without GPUs).
fn gpu_fact(sb: &SandboxLimits) -> Option<Fact> {
    let gpus = sb.gpus.as_ref()?;
    let which = match gpus {
        Gpus::All => "every GPU of the host".to_string(),
        Gpus::Count(1) => "1 GPU".into(),
        Gpus::Count(n) => format!("{n} GPUs"),
        Gpus::Devices(ids) => format!("the GPUs {}", and_list(ids)),
    };
    Some(fact(
        "gpus",
        format!(
            "Your sandbox has {which} (`--gpus {gpus}`; `nvidia-smi` lists them), and the grade runs your programs in fresh sandboxes with the same GPUs, where repeated scores must agree within {:e} and `next` with `score` within {:e}: use deterministic algorithms (`torch.use_deterministic_algorithms(True)` in PyTorch; `CUBLAS_WORKSPACE_CONFIG=:4096:8` is set for it).",
            crate::stages::bpb::REPEAT_TOLERANCE,
            crate::stages::bpb::NEXT_TOLERANCE
        ),
    ))
}

/// What the image holds: its packages, and what was measured in it at build when known.
fn libraries(r: &crate::config::image::Recipe, measured: Option<String>) -> Fact {
    let measured = measured.map(|m| format!(" {m}")).unwrap_or_default();
    let text = format!(
        "The image is {}: no package index is reachable.{measured}",
        content(r)
    );
    fact("libraries", text)
}

/// What the image is: a Dockerfile's, or Debian with its packages.
fn content(r: &crate::config::image::Recipe) -> String {
    let packages: Vec<String> = r.packages.iter().map(|p| format!("`{p}`")).collect();
    match &r.dockerfile {
        Some(_) => format!(
            "built from the Dockerfile `sandboxes/{}.Dockerfile` ({}). Nothing can be installed",
            r.name, r.description
        ),
        None => format!(
            "Debian {} with these packages and their dependencies: {}. Nothing else is installed (no pip, no compilers unless listed) and nothing can be installed",
            r.suite,
            and_list(&packages)
        ),
    }
}

/// The facts as the markdown list of the instruction's `{{graded}}` placeholder.
pub(crate) fn render_facts(facts: &[Fact]) -> String {
    facts
        .iter()
        .map(|f| format!("- {}", f.text))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the crawl instruction says of a world's request budget of `n`.
fn budget_text(n: u32) -> String {
    format!(
        "\n\nThis world also has a request budget: its web server answers at most {n} requests from your sandbox in all. Every request after that (refused ones count too) gets `429 Too Many Requests` for the rest of the stage, whatever you wait, and is logged. There are more pages than the budget lets you fetch: choose what to fetch."
    )
}

/// The stage's instruction (`tasks/<stage>/instruction.md`) with `{{budget}}` and `{{scoring_*}}`
/// placeholders filled in, `{{seed_urls}}` with the world's seed URLs (a markdown list),
/// `{{request_budget}}` with what the world's request budget is (nothing without one),
/// `{{rate_limit}}` with the requests per second its server allows, and
/// `{{graded}}` with the stage's [`facts`].
pub fn instruction(
    home: &Home,
    suite: &Suite,
    stage: &Stage,
    seed_urls: &[String],
    request_budget: Option<u32>,
    measured: Option<&crate::config::image::ImageFacts>,
) -> Result<String, SuiteError> {
    let path = home.tasks().join(&stage.name).join("instruction.md");
    let text = std::fs::read_to_string(&path).map_err(|source| SuiteError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let image = crate::config::image::Recipe::load(home, &suite.image).ok();
    let ctx = FactContext {
        measured,
        ..FactContext::of(home, suite, image.as_ref())
    };
    let scoring = &suite.scoring;
    let b = &stage.budgets;
    let fmt = |v: f64| format!("{}", v.round() as i64);
    let rate = ctx.world.as_ref().map(|c| c.rate_limit.to_string());
    let mut out = text
        .replace("{{rate_limit}}", rate.as_deref().unwrap_or("a few"))
        .replace("{{max_steps}}", &b.max_steps.to_string())
        .replace("{{max_sandbox_seconds}}", &fmt(b.max_sandbox_seconds))
        .replace("{{max_wall_seconds}}", &fmt(b.max_wall_seconds))
        .replace("{{max_step_seconds}}", &fmt(b.max_step_seconds))
        .replace("{{default_step_seconds}}", &fmt(b.default_step_seconds))
        .replace("{{max_vocab_size}}", &scoring.max_vocab_size.to_string())
        .replace("{{scoring_positions}}", &scoring.positions.to_string())
        .replace("{{scoring_timeout_seconds}}", &fmt(scoring.timeout_seconds))
        .replace("{{scoring_memory_mb}}", &scoring.memory_mb.to_string())
        .replace("{{graded}}", &render_facts(&facts(stage, &ctx)));
    let list: Vec<String> = if seed_urls.is_empty() {
        vec!["- (this suite has no world to crawl)".into()]
    } else {
        seed_urls.iter().map(|u| format!("- {u}")).collect()
    };
    out = out.replace("{{seed_urls}}", &list.join("\n"));
    let budget = request_budget.map(budget_text).unwrap_or_default();
    out = out.replace("{{request_budget}}", &budget);
    if let Some(start) = out.find("{{") {
        let end = out[start..]
            .find("}}")
            .map(|e| start + e + 2)
            .unwrap_or(out.len());
        return Err(SuiteError::Invalid {
            path: path.display().to_string(),
            message: format!("unknown placeholder {}", &out[start..end]),
        });
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::image::Recipe;

    fn home() -> Home {
        Home {
            root: env!("CARGO_MANIFEST_DIR").into(),
            cache_dir: None,
        }
    }

    fn rendered(suite: &Suite, stage: &Stage) -> String {
        let seeds = ["http://docs.gptx.test/".into()];
        instruction(&home(), suite, stage, &seeds, None, None).unwrap()
    }

    /// A world's request budget is said in the crawl instruction, with its number; without one the
    /// instruction is as it was.
    #[test]
    fn the_crawl_instruction_states_the_request_budget() {
        let suite = home().suite("mini").unwrap();
        let crawl = suite.stages.iter().find(|s| s.name == "crawl").unwrap();
        let seeds = ["http://docs.gptx.test/".to_string()];
        let with = instruction(&home(), &suite, crawl, &seeds, Some(800), None).unwrap();
        let without = instruction(&home(), &suite, crawl, &seeds, None, None).unwrap();
        assert!(with.contains("at most 800 requests from your sandbox in all"));
        assert!(with.contains("for the rest of the stage"));
        assert!(!without.contains("request budget"));
        assert!(without.contains("back off when told to (`Retry-After`).\n"));
    }

    /// What was measured in the image at build (libraries, BLAS, the matmul on the sandbox's CPUs)
    /// is told with the packages, and the thread counts with the environment.
    #[test]
    fn the_train_instruction_states_what_the_image_measured() {
        let suite = home().suite("mini").unwrap();
        let train = suite.stages.iter().find(|s| s.name == "train").unwrap();
        let facts: crate::config::image::ImageFacts = serde_json::from_str(
            r#"{"python":"3.11.2","libraries":{"numpy":"1.24.2"},"blas":"OpenBLAS 0.3.21","matmul":[{"library":"numpy","threads":1,"gflops":140.2},{"library":"numpy","threads":2,"gflops":270.0}]}"#,
        )
        .unwrap();
        let text = instruction(&home(), &suite, train, &[], None, Some(&facts)).unwrap();
        assert!(
            text.contains("no package index is reachable. Measured in this image when it was built: Python 3.11.2, numpy 1.24.2; numpy's BLAS is OpenBLAS 0.3.21; a float32 1024×1024 matrix product runs at numpy 140 GFLOP/s (1 thread)."),
            "{text}"
        );
        assert!(text.contains("OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1`"));
        let without = instruction(&home(), &suite, train, &[], None, None).unwrap();
        assert!(!without.contains("Measured in this image"));
    }

    /// The crawl says on every world, budget or not, that recall is earned per URL.
    #[test]
    fn the_crawl_instruction_states_what_earns_recall_on_every_world() {
        let suite = home().suite("mini").unwrap();
        let crawl = suite.stages.iter().find(|s| s.name == "crawl").unwrap();
        let seeds = ["http://docs.gptx.test/".to_string()];
        for budget in [None, Some(800)] {
            let text = instruction(&home(), &suite, crawl, &seeds, budget, None).unwrap();
            let recall = text.matches("earns recall only for the text of the page");
            assert_eq!(recall.count(), 1);
            assert!(text.contains("answered with status 200 at its `url` during this stage"));
            assert!(text.contains("text written from memory earns nothing"));
        }
    }

    /// The crawl says per host what `robots.txt` allows: the general web's docs host forbids its
    /// search, the documentation sites offer theirs; a world without sites still names its hosts.
    #[test]
    fn the_crawl_instruction_says_per_host_what_a_polite_crawler_may_use() {
        let frontier = home().suite("frontier").unwrap();
        let crawl = frontier.stages.iter().find(|s| s.name == "crawl").unwrap();
        let text = rendered(&frontier, crawl);
        for said in [
            "docs.gptx.test disallows `/internal/` and `/search` (its search is off limits)",
            "blog.gptx.test disallows `/drafts/`;",
            "mirror.gptx.test has no `robots.txt`: everything is allowed",
            "sqlite.gptx.test disallows `/admin/` only, so its search form (`/search?q=`) may be used",
            "pg.gptx.test disallows `/admin/` only, so its search form (`/search?q=`) may be used",
            "The documentation sites (sqlite.gptx.test and pg.gptx.test) have",
        ] {
            assert!(text.contains(said), "{said:?} not in\n{text}");
        }
        let mini = home().suite("mini").unwrap();
        let crawl = mini.stages.iter().find(|s| s.name == "crawl").unwrap();
        let text = rendered(&mini, crawl);
        assert!(text.contains("docs.gptx.test disallows `/internal/` and `/search`"));
        assert!(!text.contains("search form (`/search?q=`) may be used"));
    }

    /// Every stage states its score: the pass credit, its q, its weight and the ranking, from the
    /// values `stages::scale` computes with; the train q's claims hold of the function.
    #[test]
    fn every_stage_states_how_it_is_scored_and_how_runs_are_ranked() {
        use crate::stages::scale;
        for name in ["mini", "frontier"] {
            let suite = home().suite(name).unwrap();
            for stage in &suite.stages {
                let text = rendered(&suite, stage);
                let ratio = TRAIN_XZ_RATIO.value(&suite.gates);
                let said = scale::instruction_text(&stage.name, ratio).unwrap();
                assert!(text.contains(&said), "{name}/{}: {said}", stage.name);
                assert!(said.contains("Agents are ranked by the mean level of their runs"));
            }
        }
        // "q is 0 at the gate and rises by the same amount each time the bpb is multiplied by 0.8".
        let (x, r) = (3.143, 1.416);
        assert_eq!(scale::model(x, x, Some(r)), Some(0.0));
        let step = |b: f64| {
            scale::model(0.8 * b, x, Some(r)).unwrap() - scale::model(b, x, Some(r)).unwrap()
        };
        assert!((step(r) - step(0.8 * r)).abs() < 1e-12);
        assert_eq!(
            scale::score(true, scale::model(x, x, Some(r))),
            scale::PASS_CREDIT
        );
    }

    /// The top level's conditional xz is said as the baseline computes it.
    #[test]
    fn the_selfhost_instruction_says_what_conditional_xz_computes() {
        let suite = home().suite("mini").unwrap();
        let stage = suite.stages.iter().find(|s| s.name == "selfhost").unwrap();
        let text = rendered(&suite, stage);
        assert!(text.contains(
            "the size of `xz -9e` of C followed by d less the size of `xz -9e` of C alone"
        ));
        assert!(text.contains("joined by blank lines"));
        // The baseline computes what the sentence says: Σ |xz(C‖d)| − |xz(C)|, in bits per byte.
        use crate::world::baselines::{compute, xz_size};
        let c = b"SELECT a FROM t WHERE b = 1;\n\nCREATE TABLE t(a, b);".repeat(50);
        let docs: [&[u8]; 2] = [b"SELECT b FROM t WHERE a = 2;", b"CREATE INDEX i ON t(b);"];
        let by_hand: u64 = docs
            .iter()
            .map(|d| xz_size(&[&c[..], d].concat()) - xz_size(&c))
            .sum();
        let bytes: usize = docs.iter().map(|d| d.len()).sum();
        let b = compute(&c, &docs, &|| ());
        assert!((b.xz_conditional - by_hand as f64 * 8.0 / bytes as f64).abs() < 1e-12);
    }

    /// The facts of the suite's world are in the instruction: its domain in every stage (and in
    /// the crawl what recall counts and what the sites hold), a private world's variant and draw.
    fn world_facts_hold(ctx: &FactContext, stage: &Stage, topics: &[&str], text: &str, at: &str) {
        // A world with a target names its domain in every stage, and the crawl says what
        // its recall counts and what the sites hold.
        if let Some(d) = &ctx.domain {
            assert!(topics.contains(&"domain"), "{at}: no domain fact");
            assert!(text.contains(&format!("judged on {} text", d.name)), "{at}");
            if stage.name == "crawl" {
                assert!(topics.contains(&"sites"), "{at}: no sites fact");
                assert!(text.contains(&format!("of the gold text of {}", d.host)));
                assert!(text.contains("soft 404") && text.contains("search form"));
            }
        }
        // A private world says so in every stage, and how its hidden documents are drawn.
        if let Some(h) = &ctx.hidden {
            let want = [(h.private, "private"), (h.families, "draw")];
            for (on, t) in want {
                assert_eq!(topics.contains(&t), on, "{at}: {t} fact");
            }
        }
    }

    /// Every fact a scorer depends on is in the instruction its agent reads, for every stage of every
    /// shipped suite, with the values the scorer uses.
    #[test]
    fn every_graded_fact_is_in_the_instruction() {
        let home = home();
        let names = crate::config::suite::toml_names(&home.tasks().join("suites"));
        assert!(names.len() >= 2, "{names:?}");
        assert!(
            names.iter().any(|n| n == "frontier"),
            "a suite with a target domain is among them"
        );
        for name in names {
            let suite = home.suite(&name).unwrap();
            let image = Recipe::load(&home, &suite.image).unwrap();
            let ctx = FactContext::of(&home, &suite, Some(&image));
            for stage in &suite.stages {
                let text = rendered(&suite, stage);
                let facts = facts(stage, &ctx);
                let at = format!("suite {name}, stage {}", stage.name);
                for f in &facts {
                    assert!(text.contains(&f.text), "{at}: fact {:?} missing", f.topic);
                }
                let topics: Vec<&str> = facts.iter().map(|f| f.topic).collect();
                let always = [
                    "commands",
                    "libraries",
                    "network",
                    "copy",
                    "gate",
                    "contamination",
                ];
                for t in always {
                    assert!(topics.contains(&t), "{at}: no {t} fact in {topics:?}");
                }
                world_facts_hold(&ctx, stage, &topics, &text, &at);
                // How commands run, which libraries exist, and the network during the stage.
                assert!(text.contains(&format!("as user `{}` (uid {})", image.user, image.uid)));
                for p in &image.packages {
                    assert!(text.contains(&format!("`{p}`")), "{at}: package {p}");
                }
                let net = match stage.network {
                    StageNetwork::World => "reaches the offline web",
                    StageNetwork::None => "has no network at all",
                };
                assert!(text.contains(net), "{at}: network");
                // What the recipe copy leaves out, said from the first stage on.
                for d in EXCLUDED {
                    assert!(text.contains(&format!("`{d}/`")), "{at}: {d}/");
                }
                // The gates of this stage, with the suite's values.
                let gates = crate::config::stages::find(&stage.name).unwrap().gates;
                for g in gates {
                    let v = g.value(&suite.gates);
                    assert!(
                        text.contains(&format!("{v} ")) || text.contains(&pct(v)),
                        "{at}: gate {} = {v}",
                        g.key
                    );
                }
                let sc = &suite.scoring;
                match stage.name.as_str() {
                    "tokenize" => {
                        for verb in ["encode", "decode"] {
                            let cmd = program_command(TOKENIZER_PROGRAM, verb);
                            assert!(text.contains(&format!("`{cmd}`")), "{at}: {cmd}");
                        }
                        assert!(text.contains(&format!("{} MiB of memory", sc.memory_mb)));
                        assert!(text.contains(&format!("{} per call", secs(sc.timeout_seconds))));
                    }
                    "train" => {
                        for verb in ["score", "next"] {
                            let cmd = program_command(LM_PROGRAM, verb);
                            assert!(text.contains(&format!("`{cmd}`")), "{at}: {cmd}");
                        }
                        assert!(text.contains(&format!("{} random positions", sc.positions)));
                        assert!(text.contains(&format!("{} MiB of memory", sc.memory_mb)));
                        assert!(text.contains("within 1e-6") && text.contains("within 1e-3"));
                    }
                    "eval" => assert!(text.contains(EVAL_REPORT)),
                    "selfhost" => {
                        for cmd in [bootstrap_command(true), bootstrap_command(false)] {
                            assert!(text.contains(&format!("`{cmd}`")), "{at}: {cmd}");
                        }
                        assert!(text.contains("`#!` line is honoured"));
                        assert!(text.contains(&secs(suite.rebuild_seconds)), "{at}: budget");
                        assert!(text.contains("exits with code 0 within its budget"));
                        assert!(text.contains("when this stage ends"), "{at}: original");
                        assert!(text.contains(&format!("`{}` are not graded again", EVAL_REPORT)));
                        assert!(text.contains("offline web is reachable again"));
                        assert!(text.contains("{\"rebuild\": true}"));
                        assert!(text.contains(&format!(
                            "at most {} KiB each and {} MiB in all",
                            MAX_FILE_BYTES / 1024,
                            MAX_RECIPE_BYTES >> 20
                        )));
                    }
                    _ => {}
                }
            }
        }
    }

    /// A suite with GPUs says which, that its programs are graded on the same GPUs within the
    /// verification's tolerances (so deterministic algorithms), and sets cuBLAS for them; a suite
    /// without says nothing of GPUs.
    #[test]
    fn gpus_are_stated_when_the_suite_gives_them() {
        let mut suite = home().suite("mini").unwrap();
        let train = suite
            .stages
            .iter()
            .find(|s| s.name == "train")
            .unwrap()
            .clone();
        assert!(!rendered(&suite, &train).contains("GPU"));
        suite.sandbox.gpus = Some(Gpus::Devices(vec!["0".into(), "1".into()]));
        let text = rendered(&suite, &train);
        let which =
            "Your sandbox has the GPUs 0 and 1 (`--gpus device=0,1`; `nvidia-smi` lists them)";
        assert!(text.contains(which), "{text}");
        assert!(
            text.contains("fresh sandboxes with the same GPUs"),
            "{text}"
        );
        assert!(text.contains(
            "repeated scores must agree within 1e-6 and `next` with `score` within 1e-3"
        ));
        assert!(text.contains("use deterministic algorithms"), "{text}");
        assert!(text.contains("CUBLAS_WORKSPACE_CONFIG=:4096:8"), "{text}");
        suite.sandbox.gpus = Some(Gpus::All);
        let crawl = suite.stages[0].clone();
        let text = rendered(&suite, &crawl);
        assert!(
            text.contains("has every GPU of the host (`--gpus all`"),
            "{text}"
        );
        suite.sandbox.gpus = Some(Gpus::Count(1));
        assert!(rendered(&suite, &train).contains("has 1 GPU (`--gpus 1`"));
    }

    /// The instruction follows the suite: another gate value, another sentence.
    #[test]
    fn gates_and_exclusions_come_from_the_suite() {
        let text = std::fs::read_to_string(home().tasks().join("suites/mini.toml"))
            .unwrap()
            .replace("crawl_recall = 0.5", "crawl_recall = 0.75")
            .replace(
                "selfhost_bpb_tolerance = 0.03",
                "selfhost_bpb_tolerance = 0.025",
            )
            .replace(
                "name = \"selfhost\"",
                "name = \"selfhost\"\nexclude = [\"cache\"]",
            );
        let suite = Suite::parse(&text, std::path::Path::new("tasks/suites/mini.toml")).unwrap();
        let crawl = rendered(&suite, &suite.stages[0]);
        assert!(crawl.contains("recall at least 0.75"), "{crawl}");
        assert!(crawl.contains("`cache/`"));
        let selfhost = rendered(&suite, suite.stages.last().unwrap());
        assert!(
            selfhost.contains("within 2.5% of the original's"),
            "{selfhost}"
        );
    }

    #[test]
    fn the_recipe_runs_as_written() {
        assert_eq!(bootstrap_command(true), "./bootstrap.sh");
        assert_eq!(bootstrap_command(false), "bash ./bootstrap.sh");
    }

    #[test]
    fn lists_and_percentages_read_as_prose() {
        assert_eq!(pct(0.03), "3%");
        assert_eq!(pct(0.025), "2.5%");
        assert_eq!(
            and_list(&["a".into(), "b".into(), "c".into()]),
            "a, b and c"
        );
        assert_eq!(and_list(&["a".into()]), "a");
    }

    #[test]
    fn byte_counts_read_with_thousands_separators() {
        let said = [400_000, 2_000, 999, 1_234_567].map(thousands);
        assert_eq!(said, ["400,000", "2,000", "999", "1,234,567"]);
    }
}
