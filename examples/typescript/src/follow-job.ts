// Enqueue a download-records job over the spinner-jobs HTTP API, follow its event
// stream and print its progress, with nothing but Node's own fetch.
//
//   SPINNER_API_KEY=sj_... node dist/follow-job.js WORKBOOK_ID [TABLE_ID ...]
//
// Settings come from the environment: SPINNER_API_KEY (required), SPINNER_API_URL
// (default http://127.0.0.1:8080), SPINNER_USER_ID (the user the job is enqueued for,
// default "ts-example"). Exit status: 0 the job completed, 1 a request failed (the
// API's problem detail is printed), 2 the job failed, 3 it was cancelled.

const FINAL_EVENTS = new Set(["job.completed", "job.failed", "job.cancelled"]);
const RECONNECTS = 5;

interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  field?: string;
  request_id?: string;
}

interface TableProgress {
  table_id: string;
  name: string;
  records: number;
  status: string;
  attempt: number;
  total: number | null;
  error: string | null;
}

interface JobProgress {
  job_id: string;
  status: string;
  total_records: number;
  tables: Record<string, TableProgress>;
  started_at: string | null;
  finished_at: string | null;
  error: string | null;
}

interface JobEvent {
  event_id: string;
  kind: string;
  job_id: string;
  table_id: string | null;
  records: number | null;
  error: string | null;
  progress: JobProgress | null;
}

interface ServerSentEvent {
  id: string | null;
  event: string;
  data: string;
}

/** A request the API answered with an error: its problem document (RFC 9457). */
class ApiProblem extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem,
  ) {
    const what = problem.title ?? `HTTP ${status}`;
    const where = problem.field ? ` (${problem.field})` : "";
    super(`${status} ${what}: ${problem.detail ?? "no detail"}${where}`);
  }
}

async function problemOf(response: Response): Promise<ApiProblem> {
  const text = await response.text();
  let problem: Problem = { status: response.status, detail: text.slice(0, 300) };
  if ((response.headers.get("content-type") ?? "").includes("json")) {
    try {
      problem = JSON.parse(text) as Problem;
    } catch {
      // not JSON after all: keep the text
    }
  }
  return new ApiProblem(response.status, problem);
}

/**
 * Server-sent events as they arrive: lines end with CRLF, LF or CR; a blank line
 * ends an event; "data" lines join with newlines; comments (":") are skipped.
 */
async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buffer = "";
  let id: string | null = null;
  let event = "";
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    for (;;) {
      const end = buffer.search(/\r\n|\r|\n/);
      // A CR at the very end may be the first half of a CRLF still on its way.
      if (end < 0 || (end === buffer.length - 1 && buffer[end] === "\r" && !done)) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(buffer.startsWith("\r\n", end) ? end + 2 : end + 1);
      if (line === "") {
        if (data.length > 0) yield { id, event: event || "message", data: data.join("\n") };
        event = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      else if (field === "id" && !value.includes("\0")) id = value;
    }
    if (done) return;
  }
}

function describe(progress: JobProgress): string {
  const tables = Object.values(progress.tables).map((table) => {
    const of = table.total === null ? "" : `/${table.total}`;
    return `${table.name} ${table.records}${of} ${table.status}`;
  });
  return `progress ${progress.total_records} records | ${tables.join(" | ")}`;
}

function seconds(progress: JobProgress): string {
  if (!progress.started_at || !progress.finished_at) return "";
  const took = (Date.parse(progress.finished_at) - Date.parse(progress.started_at)) / 1000;
  return Number.isFinite(took) ? ` in ${took.toFixed(1)} s` : "";
}

async function main(argv: string[]): Promise<number> {
  const [workbookId, ...tableIds] = argv;
  if (!workbookId || workbookId.startsWith("-")) {
    process.stderr.write("usage: SPINNER_API_KEY=sj_... follow-job WORKBOOK_ID [TABLE_ID ...]\n");
    return 1;
  }
  const key = process.env.SPINNER_API_KEY;
  if (!key) {
    process.stderr.write("error: set SPINNER_API_KEY (spinner-jobs api-key create --org ORG --name NAME)\n");
    return 1;
  }
  const base = (process.env.SPINNER_API_URL ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
  const auth = { Authorization: `Bearer ${key}` };

  const input: Record<string, unknown> = { workbook_id: workbookId };
  if (tableIds.length > 0) input.table_ids = tableIds;
  const created = await fetch(`${base}/v1/jobs/download-records`, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ user_id: process.env.SPINNER_USER_ID ?? "ts-example", input }),
    signal: AbortSignal.timeout(30_000),
  });
  if (created.status !== 202) throw await problemOf(created);
  const jobId = ((await created.json()) as { job_id: string }).job_id;
  process.stdout.write(`enqueued ${jobId}\n`);

  const names = new Map<string, string>();
  let lastEventId: string | null = null;
  for (let attempt = 0; attempt <= RECONNECTS; attempt++) {
    if (attempt > 0) {
      process.stderr.write(`stream ended early; resuming after ${lastEventId ?? "the start"}\n`);
      await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
    }
    const headers: Record<string, string> = { ...auth, Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const stream = await fetch(`${base}/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers });
    if (stream.status === 204) return 0; // the final event was delivered before
    if (stream.status !== 200 || !stream.body) throw await problemOf(stream);
    for await (const message of serverSentEvents(stream.body)) {
      if (message.id !== null) lastEventId = message.id;
      if (message.event === "problem") {
        throw new ApiProblem(0, JSON.parse(message.data) as Problem);
      }
      const event = JSON.parse(message.data) as JobEvent;
      if (event.progress) {
        for (const [id, table] of Object.entries(event.progress.tables)) names.set(id, table.name);
      }
      if (message.event === "progress" && event.progress) {
        process.stdout.write(describe(event.progress) + "\n");
      } else if (message.event.startsWith("table.")) {
        const name = names.get(event.table_id ?? "") ?? event.table_id;
        const error = event.error ? `: ${event.error}` : "";
        process.stdout.write(`${message.event} ${name}: ${event.records ?? 0} records${error}\n`);
      } else if (FINAL_EVENTS.has(message.event)) {
        const progress = event.progress;
        const count = Object.keys(progress?.tables ?? {}).length;
        const took = progress ? seconds(progress) : "";
        const error = event.error ? `: ${event.error}` : "";
        process.stdout.write(
          `${message.event} ${jobId}: ${event.records ?? 0} records, ${count} tables${took}${error}\n`,
        );
        return message.event === "job.completed" ? 0 : message.event === "job.failed" ? 2 : 3;
      }
    }
  }
  process.stderr.write(`error: the event stream kept ending before the job did\n`);
  return 1;
}

main(process.argv.slice(2)).then(
  (status) => {
    process.exitCode = status;
  },
  (error: unknown) => {
    const text = error instanceof ApiProblem ? error.message : String(error);
    const requestId = error instanceof ApiProblem && error.problem.request_id;
    process.stderr.write(`error: ${text}${requestId ? ` [request ${requestId}]` : ""}\n`);
    process.exitCode = 1;
  },
);
