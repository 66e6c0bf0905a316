#!/usr/bin/env node
// @waiaas/cli: runs the waiaas-launcher binary from this platform's package
// (@waiaas/cli-<os>-<cpu>, an optional dependency npm installs only where its
// `os` and `cpu` match) with the same arguments, stdio and exit status.
'use strict';

const { spawn } = require('child_process');

// npm's `os`/`cpu` words are Node's own process.platform / process.arch.
const target = `${process.platform}-${process.arch}`;
const pkg = `@waiaas/cli-${target}`;

function fail(message) {
  process.stderr.write(`waiaas-launcher: ${message}\n`);
  process.exit(1);
}

function shipped() {
  try {
    const deps = require('../package.json').optionalDependencies || {};
    return Object.keys(deps).map((name) => name.replace('@waiaas/cli-', ''));
  } catch (_) {
    return [];
  }
}

let binary;
try {
  binary = require.resolve(`${pkg}/bin/waiaas-launcher`);
} catch (_) {
  const targets = shipped();
  if (targets.length && !targets.includes(target)) {
    fail(`no prebuilt binary for ${target}; this release ships ${targets.join(', ')}.`);
  }
  fail(
    `the platform package ${pkg} is not installed.\n` +
      '  It is an optional dependency of @waiaas/cli: installs with --omit=optional\n' +
      '  (or --no-optional), or a node_modules copied from another platform, leave it out.\n' +
      '  Reinstall with: npm install -g @waiaas/cli',
  );
}

const child = spawn(binary, process.argv.slice(2), { stdio: 'inherit' });

// Ctrl-C and Ctrl-\ reach the whole foreground process group, the launcher
// included: wait for it to finish instead of dying first. SIGTERM and SIGHUP
// usually target this process alone (kill, service managers): pass them on.
for (const signal of ['SIGINT', 'SIGQUIT']) process.on(signal, () => {});
for (const signal of ['SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    try {
      child.kill(signal);
    } catch (_) {
      // already gone
    }
  });
}

child.on('error', (err) => fail(`cannot start ${binary}: ${err.message}`));
child.on('exit', (code, signal) => {
  if (signal) {
    // Die the same way, so shells and supervisors see what happened.
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
    return;
  }
  process.exit(code === null ? 1 : code);
});
