// Lists the tests of a results file that did not pass (cache-layer's addition to the suite's runner).
import fs from 'fs'
import tests from './tests/index.mjs'
import { determineTestResult, resultTypes } from './test-engine/lib/results.mjs'
const names = Object.fromEntries(Object.entries(resultTypes).map(([k, v]) => [v[2], k]))
const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
for (const suite of tests) for (const t of suite.tests) {
  if (t.browser_only) continue
  const kind = t.kind || 'required'
  const r = names[determineTestResult(tests, t.id, results)[2]]
  if (r !== 'pass' && (process.argv[3] === 'all' || kind === 'required')) console.log(kind, r, t.id, '|', t.name, '|', JSON.stringify(results[t.id]).slice(0,150))
}
