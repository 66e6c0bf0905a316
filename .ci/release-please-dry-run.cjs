#!/usr/bin/env node
// Runs release-please's own code offline on this repository's
// release-please-config.json and .release-please-manifest.json: for a set of
// Conventional Commits it builds the Release PR that release-please would
// open (SPEC §10 rows 19, 20, 24), applies the PR's file updates to a copy of
// the workspace, and checks them. Nothing talks to a forge or a registry.
//
//   node .ci/release-please-dry-run.cjs REPO_ROOT OUT_DIR
//
// Module resolution: run with NODE_PATH pointing at a node_modules that holds
// release-please (.ci/static-checks installs it outside the repository).
// Prints one line per scenario; writes OUT_DIR/<scenario>/ (the updated
// files) and OUT_DIR/titles.txt (the Release PR titles, which .ci/static-checks
// lints with the PR-title rule). Exits 1 on the first failed expectation.
'use strict';

const fs = require('fs');
const path = require('path');

const root = path.resolve(process.argv[2] || '.');
const out = path.resolve(process.argv[3] || fs.mkdtempSync('/tmp/rp-'));

const { Manifest } = require('release-please/build/src/manifest');
const { buildStrategy } = require('release-please/build/src/factory');
const { parseConventionalCommits } = require('release-please/build/src/commit');
const { TagName } = require('release-please/build/src/util/tag-name');
const { setLogger } = require('release-please/build/src/util/logger');

// Quiet: only failures speak.
const silent = { error: console.error, warn() {}, info() {}, debug() {}, trace() {} };
setLogger(silent);

function fail(message) {
  console.error(`release-please dry run: ${message}`);
  process.exit(1);
}

// The slice of the GitHub client release-please reads files through, over
// the local working tree.
const github = {
  repository: { owner: 'waiaas', repo: 'waiaas-launcher', defaultBranch: 'main' },
  async getFileContentsOnBranch(file) {
    const full = path.join(root, file);
    if (!fs.existsSync(full)) {
      const { FileNotFoundError } = require('release-please/build/src/errors');
      throw new FileNotFoundError(file);
    }
    const parsedContent = fs.readFileSync(full, 'utf8');
    return { parsedContent, content: Buffer.from(parsedContent).toString('base64'), sha: '0', mode: '100644' };
  },
  async getFileContents(file) {
    return this.getFileContentsOnBranch(file, 'main');
  },
  async getFileJson(file) {
    return JSON.parse((await this.getFileContentsOnBranch(file, 'main')).parsedContent);
  },
  async findFilesByGlobAndRef() {
    return [];
  },
};

function workspaceVersion(cargoToml) {
  let section = '';
  for (const line of cargoToml.split('\n')) {
    const trimmed = line.trim();
    if (trimmed.startsWith('[')) section = trimmed;
    const m = /^version\s*=\s*"([^"]+)"/.exec(trimmed);
    if (section === '[workspace.package]' && m) return m[1];
  }
  return null;
}

function lockVersions(lock) {
  const versions = {};
  for (const block of lock.split('[[package]]').slice(1)) {
    const name = /^name = "([^"]+)"/m.exec(block);
    const version = /^version = "([^"]+)"/m.exec(block);
    if (name && version) versions[name[1]] = version[1];
  }
  return versions;
}

function changedLines(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  if (a.length !== b.length) return -1;
  return a.filter((line, i) => line !== b[i]).length;
}

const SCENARIOS = [
  { name: 'fix', commits: ['fix(daemon): close idle connections on shutdown'], bump: 'patch' },
  { name: 'feat', commits: ['feat(launcher): upgrade --from FILE', 'fix: typo in a message'], bump: 'minor' },
  { name: 'breaking-bang', commits: ['feat!: config.toml sections renamed'], bump: 'major' },
  {
    name: 'breaking-footer',
    commits: ['fix(daemon): refuse unknown keys\n\nBREAKING CHANGE: unknown config keys are now errors'],
    bump: 'major',
  },
  { name: 'release-as-rc', commits: ['chore: release candidate\n\nRelease-As: {minor}-rc.1'], bump: 'rc' },
];

function expected(current, bump) {
  const [major, minor, patch] = current.split('-')[0].split('.').map(Number);
  switch (bump) {
    case 'patch':
      return `${major}.${minor}.${patch + 1}`;
    case 'minor':
      return `${major}.${minor + 1}.0`;
    case 'major':
      return `${major + 1}.0.0`;
    case 'rc':
      return `${major}.${minor + 1}.0-rc.1`;
    default:
      throw new Error(bump);
  }
}

async function main() {
  const manifest = JSON.parse(fs.readFileSync(path.join(root, '.release-please-manifest.json'), 'utf8'));
  const current = manifest['.'];
  if (!current) fail('.release-please-manifest.json has no "." entry');
  const cargoToml = fs.readFileSync(path.join(root, 'Cargo.toml'), 'utf8');
  const cargoLock = fs.readFileSync(path.join(root, 'Cargo.lock'), 'utf8');
  if (workspaceVersion(cargoToml) !== current) {
    fail(`manifest version ${current} differs from Cargo.toml's [workspace.package] version ${workspaceVersion(cargoToml)}`);
  }
  const ours = Object.keys(lockVersions(cargoLock)).filter(n => lockVersions(cargoLock)[n] === current && n.startsWith('waiaas-'));

  // Parsed by release-please itself, as the action does on main.
  const parsed = await Manifest.fromManifest(github, 'main', 'release-please-config.json', '.release-please-manifest.json');
  const config = parsed.repositoryConfig['.'];
  if (!config) fail('release-please-config.json has no "." package');
  const released = parsed.releasedVersions['.'];
  if (!released || released.toString() !== current) {
    fail(`release-please reads the released version as ${released}, not ${current}`);
  }

  const titles = [];
  for (const scenario of SCENARIOS) {
    const strategy = await buildStrategy({ github, ...config, path: '.', targetBranch: 'main' });
    const minor = expected(current, 'minor');
    const raw = scenario.commits.map((message, i) => ({
      sha: `${i + 1}`.padStart(40, '0'),
      message: message.replace('{minor}', minor),
      files: ['README.md'],
    }));
    const commits = parseConventionalCommits(raw);
    const latestRelease = { tag: TagName.parse(`v${current}`), sha: 'f'.repeat(40), notes: '' };
    const pr = await strategy.buildReleasePullRequest(commits, latestRelease);
    if (!pr) fail(`${scenario.name}: release-please would open no Release PR`);
    const want = expected(current, scenario.bump);
    const got = pr.version.toString();
    if (got !== want) fail(`${scenario.name}: the Release PR is for ${got}, expected ${want}`);
    titles.push(pr.title.toString());

    const dir = path.join(out, scenario.name);
    fs.mkdirSync(dir, { recursive: true });
    const touched = {};
    for (const update of pr.updates) {
      const file = path.join(root, update.path);
      let content = touched[update.path];
      if (content === undefined) {
        if (fs.existsSync(file)) content = fs.readFileSync(file, 'utf8');
        else if (update.createIfMissing) content = undefined;
        else continue;
      }
      touched[update.path] = update.updater.updateContent(content, silent);
    }
    for (const [file, content] of Object.entries(touched)) {
      fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      fs.writeFileSync(path.join(dir, file), content);
    }

    const newToml = touched['Cargo.toml'];
    if (!newToml || workspaceVersion(newToml) !== want) {
      fail(`${scenario.name}: the Release PR does not set [workspace.package] version = "${want}" in Cargo.toml`);
    }
    if (changedLines(cargoToml, newToml) !== 1) {
      fail(`${scenario.name}: the Release PR changes more of Cargo.toml than its version line`);
    }
    const newLock = touched['Cargo.lock'];
    if (!newLock) fail(`${scenario.name}: the Release PR leaves Cargo.lock alone (cargo --locked would fail)`);
    const versions = lockVersions(newLock);
    for (const name of ours) {
      if (versions[name] !== want) fail(`${scenario.name}: Cargo.lock keeps ${name} at ${versions[name]}, not ${want}`);
    }
    if (changedLines(cargoLock, newLock) !== ours.length) {
      fail(`${scenario.name}: the Release PR changes more of Cargo.lock than the ${ours.length} workspace versions`);
    }
    const changelog = touched['CHANGELOG.md'];
    if (!changelog || !changelog.includes(`## [${want}]`)) {
      fail(`${scenario.name}: CHANGELOG.md gets no "## [${want}]" section`);
    }
    // Gate 1: merging the Release PR makes release-please tag the merge and
    // create the GitHub Release; an rc release is marked as a prerelease.
    const [release] = await strategy.buildReleases({
      headBranchName: pr.headRefName,
      baseBranchName: 'main',
      number: 1,
      title: pr.title.toString(),
      body: pr.body.toString(),
      labels: pr.labels,
      files: [],
      sha: 'a'.repeat(40),
    });
    if (!release) fail(`${scenario.name}: merging the Release PR would create no release`);
    const tag = release.tag.toString();
    if (tag !== `v${want}`) fail(`${scenario.name}: the release is tagged ${tag}, expected v${want}`);
    // As Manifest.buildReleases marks it (release-please's manifest.js).
    const prerelease = Boolean(config.prerelease && (release.tag.version.preRelease || release.tag.version.major === 0));
    if (prerelease !== want.includes('-')) {
      fail(`${scenario.name}: the GitHub Release of ${want} would ${prerelease ? '' : 'not '}be marked as a prerelease`);
    }
    console.log(`${scenario.name}: ${scenario.commits.map(c => c.split('\n')[0]).join(' + ')} → ${got} (PR "${pr.title.toString()}", tag ${tag}${prerelease ? ', prerelease' : ''})`);
  }
  fs.writeFileSync(path.join(out, 'titles.txt'), titles.join('\n') + '\n');
}

main().catch(e => fail(e && e.stack ? e.stack : String(e)));
