// roblox-ts typings for Hoard (clients/roblox/src/Hoard.luau), in the @rbxts style.

interface HoardSignal<T extends Callback> {
	Connect(fn: T): { Disconnect(): void };
	Once(fn: T): { Disconnect(): void };
	Wait(): LuaTuple<Parameters<T>>;
}

interface HoardFailure {
	status: number;
	code: string;
	message: string;
	body: unknown;
}

type HoardOp =
	| { op: "set"; path: string; value: unknown }
	| { op: "remove"; path: string }
	| { op: "increment"; path: string; by: number; min?: number; max?: number }
	| { op: "add_item"; path: string; id: string; value: unknown }
	| { op: "remove_item"; path: string; id: string }
	| { op: "test"; path: string; value: unknown };

interface HoardLeg {
	From: number;
	To: number;
	Items?: string[];
	Currencies?: Record<string, number>;
}

interface HoardSettings {
	Url?: string;
	SecretName?: string;
	Label?: string;
	AutosaveSeconds?: number;
	LongPollSeconds?: number;
	StartWindowSeconds?: number;
	StartBurst?: number;
	StartRefillSeconds?: number;
	HandoffWaitSeconds?: number;
	LoadFailure?: "Refuse" | "Defaults";
	MigrateFromProfileStore?: string;
	Mock?: boolean;
}

interface HoardProfile<T extends object> {
	readonly Key: string;
	Data: T;
	readonly LastSavedData: T;
	readonly UserIds: string[];
	RobloxMetaData: Record<string, unknown>;
	readonly FirstSessionTime: number;
	readonly SessionLoadCount: number;
	readonly KeyInfo: { Version: number };
	/** Played on defaults after a load failure: never saved. */
	readonly Errored: boolean;
	readonly OnSave: HoardSignal<() => void>;
	readonly OnLastSave: HoardSignal<(reason: "Manual" | "External" | "Shutdown") => void>;
	readonly OnSessionEnd: HoardSignal<() => void>;
	readonly OnAfterSave: HoardSignal<(lastSavedData: T) => void>;
	readonly OnChanged: HoardSignal<(path: string, newValue: unknown, oldValue: unknown) => void>;
	IsActive(): boolean;
	Reconcile(): void;
	Save(): void;
	EndSession(): void;
	AddUserId(userId: number): void;
	RemoveUserId(userId: number): void;
	SetRobloxMetaData(metaData: Record<string, unknown>): void;
	MessageHandler(fn: (message: unknown, processed: () => void) => void): void;
	SetValue(path: string, value: unknown): void;
	UpdateValue(path: string, fn: (old: unknown) => unknown): void;
	GetChangedSignal(path: string): HoardSignal<(newValue: unknown, oldValue: unknown) => void>;
}

interface HoardStore<T extends object> {
	readonly Name: string;
	readonly Template: T;
	StartSessionAsync(key: string, params?: { Cancel?: () => boolean; Steal?: boolean }): HoardProfile<T> | undefined;
	MessageAsync(key: string, message: unknown, messageId?: string): LuaTuple<[boolean, unknown]>;
	GetAsync(key: string): LuaTuple<[boolean, unknown]>;
	UpdateAsync(key: string, ops: HoardOp[], updateId?: string): LuaTuple<[boolean, { value: unknown; version: number } | HoardFailure]>;
}

interface Hoard {
	New<T extends object>(name: string, template: T): HoardStore<T>;
	Configure(settings: HoardSettings): void;
	TradeAsync(
		tradeId: string,
		/** A profile held here, or `{Store, Key}` for a party on another server (a cross-server trade). */
		parties: (HoardProfile<object> | { Store: string | HoardStore<object>; Key: string })[],
		legs: HoardLeg[],
		holdingsPath?: string,
		/** Cross-server trades: how long the others may take to prepare (ms, default 30000). */
		timeoutMs?: number,
	): LuaTuple<[boolean, unknown]>;
	ProcessReceiptAsync(
		profile: HoardProfile<object> | undefined,
		receiptInfo: ReceiptInfo,
		grant: HoardOp[],
	): Enum.ProductPurchaseDecision;
	Replicate(profile: HoardProfile<object>, player: Player, remote: RemoteEvent, privateFields?: string[]): () => void;
	RequestCount(): number;
	IsMock(): boolean;
	readonly IsClosing: boolean;
	readonly IsCriticalState: boolean;
	readonly DataStoreState: "NotReady" | "Access" | "NoAccess";
	readonly OnError: HoardSignal<(message: string, storeName?: string, key?: string) => void>;
	readonly OnCriticalToggle: HoardSignal<(isCritical: boolean) => void>;
}

declare const Hoard: Hoard;
export = Hoard;
