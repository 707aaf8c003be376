// Reads env files back the way a Node app does, for ztr's format tests.
// One request per line on stdin, "FORMAT<TAB>PATH" with FORMAT dotenv or json; for each, one JSON
// line on stdout mapping every reader of that format ("dotenv@VERSION", "dotenv@VERSION fast",
// "JSON.parse") to what it loaded, or to {"error": message}.
'use strict'

const fs = require('fs')
const path = require('path')
const readline = require('readline')

const PACKAGES = ['dotenv16', 'dotenv17', 'dotenv']

function readers () {
  const found = {}
  for (const name of PACKAGES) {
    const dotenv = require(name)
    const manifest = JSON.parse(fs.readFileSync(
      path.join(__dirname, 'node_modules', name, 'package.json'), 'utf8'))
    const label = `dotenv@${manifest.version}`
    // config() is what an app calls: it reads the file as UTF-8 and parses it. processEnv
    // keeps this process's environment out of it; quiet keeps the banner off stdout.
    found[label] = (file) => load(dotenv, { path: file })
    if (Number(manifest.version.split('.')[0]) >= 18) {
      found[`${label} fast`] = (file) => load(dotenv, { path: file, fast: true })
    }
  }
  return found
}

function load (dotenv, options) {
  const target = {}
  const result = dotenv.config({ ...options, processEnv: target, quiet: true, override: true })
  if (result.error) {
    return { error: String(result.error.message) }
  }
  return target
}

const all = {
  dotenv: readers(),
  json: { 'JSON.parse': (file) => JSON.parse(fs.readFileSync(file, 'utf8')) }
}
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  const tab = line.indexOf('\t')
  const format = line.slice(0, tab)
  const file = line.slice(tab + 1)
  const out = {}
  for (const [label, read] of Object.entries(all[format] || {})) {
    try {
      out[label] = read(file)
    } catch (err) {
      out[label] = { error: String(err && err.message) }
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n')
})
