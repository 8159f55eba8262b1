// The chat page: conversations in the sidebar, the current one in the middle, the composer
// below. Each module holds one concern and registers its own controls; the state they share
// is state.js. This one starts the page.

import { connect } from "./connection.js";
import { openConversation } from "./conversations.js";
import "./reply.js";
import { loadSettingsIntoForm } from "./settings.js";
import { state } from "./state.js";
import * as store from "./store.js";
import "./transfer.js";

loadSettingsIntoForm();
openConversation(store.listConversations()[0]?.id).then(() => connect(state.conv?.model));
