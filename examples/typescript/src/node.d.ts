// The few Node.js globals the example uses, declared here rather than installing
// @types/node: fetch, streams, TextDecoder and timers are typed by the DOM library.

declare const process: {
  readonly argv: string[];
  readonly env: Record<string, string | undefined>;
  exitCode: number | undefined;
  readonly stdout: { write(text: string): boolean };
  readonly stderr: { write(text: string): boolean };
};
