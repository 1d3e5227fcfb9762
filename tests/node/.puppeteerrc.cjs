// mermaid-cli's puppeteer uses Debian's chromium (tests/fs/test_mirror.py): never download a browser of its own.
module.exports = { skipDownload: true };
