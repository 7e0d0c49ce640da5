// The eqxform extension: the TextMate grammar colours the text (see
// package.json); everything else comes from eqxform's language server
// (`eqxform lsp`, over stdio).
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function makeClient() {
  const config = vscode.workspace.getConfiguration("eqxform");
  const [command, ...args] = config.get("server.command", ["eqxform", "lsp"]);
  const server = { command, args, transport: TransportKind.stdio };
  return new LanguageClient(
    "eqxform",
    "eqxform",
    { run: server, debug: server },
    {
      documentSelector: [
        { scheme: "file", language: "eqxform" },
        { scheme: "untitled", language: "eqxform" },
      ],
    }
  );
}

async function activate(context) {
  client = makeClient();
  // A new server command takes effect at once: stop the old server, start the new.
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration("eqxform.server.command")) {
        await client.stop();
        client = makeClient();
        await client.start();
      }
    })
  );
  await client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
