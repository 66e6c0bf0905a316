// Conventional Commits for pull-request titles (pr-title.yml): with squash
// merging, a PR's title becomes the commit on main that release-please reads
// to decide the next version (feat → minor, fix → patch, `!`/BREAKING CHANGE
// → major) and to write CHANGELOG.md.
export default {
  extends: ['@commitlint/config-conventional'],
  rules: {
    // Subjects may name things as they are spelt ("feat: SIGHUP restarts …").
    'subject-case': [0],
    'header-max-length': [2, 'always', 100],
    'type-enum': [
      2,
      'always',
      ['build', 'chore', 'ci', 'docs', 'feat', 'fix', 'perf', 'refactor', 'revert', 'style', 'test'],
    ],
  },
};
